"""MIMIC-IV and MIMIC-III preparation, exactly as Edin et al. (SIGIR 2023) define the benchmarks.

MIMIC-IV (ICD-10 or ICD-9), in order:
 1. keep code rows of the ICD version; canonical code spelling (dots, see `clem_icd.codes`);
 2. drop rows with a missing code and duplicate (hadm_id, code) rows;
 3. drop notes with missing text and duplicate (hadm_id, text) notes;
 4. join notes to codes by hadm_id; the joined admissions are those with a note and >= 1 code;
 5. keep a code when >= `min_count` joined admissions have it, counted separately for
    diagnoses and procedures, before the split file is applied;
 6. drop admissions left without codes; target = procedure codes, then diagnosis codes
    (each group sorted);
 7. split by the published split file (`_id` = hadm_id); admissions absent from it are dropped
    and counted.
MIMIC-III (Mullenbach et al. 2018 as re-implemented by Edin et al.): discharge summaries and
their addenda joined per admission with a space, ICD-9 diagnosis and procedure codes, no
frequency filter ("full") or the 50 codes of Mullenbach et al. ("50").

The note file is streamed twice (pyarrow, batch by batch): once for keys and a digest of each
text, once to write the kept documents. Only ids, digests and code lists are held in memory, so
MIMIC-IV-Note (331k notes, several GB) is prepared in well under 2 GB of RAM.

Departure from the reference code, written down: an admission with several distinct notes
(none in MIMIC-IV-Note discharge; addenda in MIMIC-III) is one document whose text joins the
notes in file order, so document ids are unique and codes are counted once per admission.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.feather as pafeather

from clem_icd.codes import CodeDictionary, CodeSystem, normalize_code, system_for
from clem_icd.data.dataset import DatasetWriter, Prepared, canonical_split, input_record
from clem_icd.data.io import (
    decode_utf8_column,
    find_table,
    parse_int_column,
    read_csv_strings,
    stream_csv_records,
)
from clem_icd.data.text import clean_text_series
from clem_icd.errors import ClemError, where
from clem_icd.progress import progress_bar

# The 50 codes of the MIMIC-III 50 benchmark as published by Mullenbach et al. (2018) and used
# by Edin et al. (2023); recomputing "the 50 most frequent" on MIMIC-III v1.4 gives a different set.
MIMIC_III_TOP_50 = frozenset("""
401.9 38.93 428.0 427.31 414.01 96.04 96.6 584.9 250.00 96.71 272.4 518.81 99.04 39.61 599.0
530.81 96.72 272.0 285.9 88.56 244.9 486 38.91 285.1 36.15 276.2 496 99.15 995.92 V58.61 507.0
038.9 88.72 585.9 403.90 311 305.1 37.22 412 33.24 39.95 287.5 410.71 276.1 V45.81 424.0 45.13
V15.82 511.9 37.23
""".split())


@dataclass
class CodeTable:
    """One code table (diagnoses or procedures) of one ICD version."""

    path: Path
    system: CodeSystem
    id_column: str
    code_column: str
    version_column: str | None  # MIMIC-IV has icd_version; MIMIC-III is ICD-9 only


@dataclass
class NoteTable:
    path: Path
    id_column: str
    text_column: str
    category_column: str | None = None  # MIMIC-III NOTEEVENTS mixes note kinds
    category: str | None = None
    drop_duplicate_texts: bool = True
    separator: str = "\n\n"  # between the notes of one admission


@dataclass
class MimicRecipe:
    source: str
    notes: NoteTable
    code_tables: list[CodeTable]  # procedures first: that is the target order
    split_file: Path
    min_count: int = 0
    keep_codes: frozenset[str] | None = None
    clean_text: bool = False
    options: dict = field(default_factory=dict)


def load_codes(table: CodeTable, version: int) -> tuple[pl.DataFrame, dict]:
    """Unique (hadm_id, code) pairs of one table, codes in canonical spelling."""
    columns = [table.id_column, table.code_column] + ([table.version_column] if table.version_column else [])
    frame = read_csv_strings(table.path, columns)
    rows = len(frame)
    if table.version_column:
        versions = parse_int_column(frame, table.version_column, table.path)
        frame = frame.filter(versions == version)
    rows_of_version = len(frame)
    frame = frame.with_columns(hadm_id=parse_int_column(frame, table.id_column, table.path),
                               raw=pl.col(table.code_column).str.strip_chars())
    missing_code = frame["raw"].is_null() | (frame["raw"] == "")
    missing_id = frame["hadm_id"].is_null() & ~missing_code
    if missing_id.any():
        row = int(frame.filter(missing_id)["_row"][0]) + 1
        raise ClemError(f"{where(table.path, row, table.id_column)}: missing admission id")
    frame = frame.filter(~missing_code)

    canonical: dict[str, str] = {}
    for raw, row in frame.group_by("raw", maintain_order=True).agg(pl.col("_row").first()).iter_rows():
        try:
            canonical[raw] = normalize_code(raw, table.system)
        except ValueError as exc:  # its message quotes the value: shown only if one short,
            # printable token; a longer value may be note text in a shifted row
            shown = str(exc) if len(raw) <= 10 and len(raw.split()) == 1 and raw.isprintable() else (
                f"a value of {len(raw)} characters is not a well-formed {table.system.value} code")
            raise ClemError(f"{where(table.path, int(row) + 1, table.code_column)}: {shown}") from None
    frame = frame.with_columns(code=pl.col("raw").replace_strict(canonical, return_dtype=pl.String))
    pairs = frame.select("hadm_id", "code").unique(maintain_order=True)
    stats = {"rows": rows, "rows_of_version": rows_of_version,
             "rows_missing_code": int(missing_code.sum()),
             "duplicate_rows": len(frame) - len(pairs)}
    return pairs, stats


def scan_notes(notes: NoteTable) -> tuple[pl.DataFrame, dict]:
    """First pass: (record, hadm_id, digest) of every usable note, and what was dropped."""
    records, hadm_ids, digests = [], [], []
    stats = Counter()
    size = notes.path.stat().st_size
    with progress_bar(f"scanning {notes.path.name}", size, bytes_=True) as update:
        for first, batch, position in _note_batches(notes):
            ids, texts, keep = _decode_batch(notes, batch, first)
            stats["notes_read"] += len(texts)
            for offset, (hadm_id, text, usable) in enumerate(zip(ids, texts, keep)):
                if not usable:
                    stats["notes_of_other_categories"] += 1
                elif text is None or not text.strip():
                    stats["notes_missing_text"] += 1
                elif hadm_id is None:
                    stats["notes_missing_hadm_id"] += 1
                else:
                    records.append(first + offset)
                    hadm_ids.append(hadm_id)
                    digests.append(hashlib.blake2b(text.encode(), digest_size=16).digest())
            update(position)
    keys = pl.DataFrame({"record": records, "hadm_id": hadm_ids, "digest": digests},
                        schema={"record": pl.Int64, "hadm_id": pl.Int64, "digest": pl.Binary})
    if notes.drop_duplicate_texts:
        unique = keys.unique(subset=["hadm_id", "digest"], keep="first", maintain_order=True)
        stats["duplicate_notes"] = len(keys) - len(unique)
        keys = unique
    return keys.drop("digest"), dict(stats)


def _note_batches(notes: NoteTable):
    """(first record number, batch, compressed bytes read so far) for each batch."""
    columns = [notes.id_column, notes.text_column] + ([notes.category_column] if notes.category_column else [])
    first = 0
    with open(notes.path, "rb") as raw:
        for batch in stream_csv_records(notes.path, columns, source=raw):
            yield first, batch, raw.tell()
            first += batch.num_rows


def _decode_batch(notes: NoteTable, batch: pa.RecordBatch, first: int):
    texts = decode_utf8_column(batch.column(notes.text_column), notes.path, notes.text_column, first).to_pylist()
    id_column = notes.id_column  # the frame's column is named as in the file: errors name it
    id_strings = pl.DataFrame({id_column: decode_utf8_column(batch.column(id_column), notes.path,
                                                             id_column, first)})
    ids = parse_int_column(id_strings, id_column, notes.path, row_offset=first).to_list()
    if notes.category_column:
        categories = decode_utf8_column(batch.column(notes.category_column), notes.path,
                                        notes.category_column, first).to_pylist()
        keep = [c == notes.category for c in categories]
    else:
        keep = [True] * len(texts)
    return ids, texts, keep


def read_split_file(path: Path) -> pl.DataFrame:
    """The published split file: `_id` (hadm_id) and `split`; .feather, .parquet or .csv."""
    if not path.is_file():
        raise ClemError(f"{path}: split file not found")
    try:
        if path.suffix in (".feather", ".arrow", ".ipc"):
            frame = pl.from_arrow(pafeather.read_table(path))
        elif path.suffix == ".parquet":
            frame = pl.read_parquet(path)
        else:
            frame = pl.read_csv(path, infer_schema_length=0)
    except Exception as exc:
        raise ClemError(f"{path}: cannot read split file ({exc.__class__.__name__})") from None
    missing = {"_id", "split"} - set(frame.columns)
    if missing:
        raise ClemError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    frame = frame.select(pl.col("_id").cast(pl.String), pl.col("split").cast(pl.String)).with_row_index("_row")
    frame = frame.with_columns(hadm_id=parse_int_column(frame, "_id", path))
    names = {s: canonical_split(s) for s in frame["split"].unique().to_list()}
    bad = [s for s, c in names.items() if c is None]
    if bad:
        row = int(frame.filter(pl.col("split").is_in(bad) | pl.col("split").is_null())["_row"][0]) + 1
        raise ClemError(f"{where(path, row, 'split')}: unknown split name (expected train, val or test)")
    frame = frame.with_columns(split=pl.col("split").replace_strict(names, return_dtype=pl.String))
    duplicated = frame["hadm_id"].is_duplicated()
    if duplicated.any():
        row = int(frame.filter(duplicated)["_row"][1]) + 1
        raise ClemError(f"{where(path, row, '_id')}: admission listed twice")
    return frame.select("hadm_id", "split")


def prepare_mimic(recipe: MimicRecipe, out: Path, dictionary: CodeDictionary, *, overwrite: bool = False) -> Prepared:
    if not recipe.split_file.is_file():
        raise ClemError(f"{recipe.split_file}: split file not found")
    splits = read_split_file(recipe.split_file)
    version = recipe.code_tables[0].system.version
    code_frames, code_stats = [], {}
    for table in recipe.code_tables:
        pairs, stats = load_codes(table, version)
        code_frames.append(pairs.with_columns(system=pl.lit(table.system.value)))
        code_stats[table.system.value] = stats
    notes, note_stats = scan_notes(recipe.notes)

    # Steps 4-6 on ids and codes only.
    note_ids = notes.select("hadm_id").unique()
    codes = pl.concat(code_frames).join(note_ids, on="hadm_id", how="semi")
    joined = codes["hadm_id"].n_unique()
    counts = codes.group_by("system", "code").len()
    kept = counts
    if recipe.min_count > 1:
        kept = kept.filter(pl.col("len") >= recipe.min_count)
    if recipe.keep_codes is not None:
        kept = kept.filter(pl.col("code").is_in(list(recipe.keep_codes)))
    codes = codes.join(kept.select("system", "code"), on=["system", "code"], how="semi")
    order = {t.system.value: i for i, t in enumerate(recipe.code_tables)}
    targets = (codes.with_columns(rank=pl.col("system").replace_strict(order, return_dtype=pl.Int64))
               .sort("hadm_id", "rank", "code")
               .group_by("hadm_id", maintain_order=True).agg(pl.col("code")))
    documents = targets.join(splits, on="hadm_id", how="left")
    not_in_split = int(documents["split"].is_null().sum())
    documents = documents.filter(pl.col("split").is_not_null())
    if documents.is_empty():
        raise ClemError(f"{recipe.split_file}: the split file matches no admission of the prepared data "
                        f"({len(targets)} admissions with codes, {len(splits)} ids in the split file)")
    wanted = dict(zip(documents["hadm_id"].to_list(), zip(documents["code"].to_list(), documents["split"].to_list())))
    records = notes.filter(pl.col("hadm_id").is_in(list(wanted)))
    notes_per_admission = Counter(records["hadm_id"].to_list())
    keep_records = set(records["record"].to_list())

    code_systems = {code: CodeSystem(system) for system, code in kept.select("system", "code").iter_rows()}
    with DatasetWriter(out, overwrite=overwrite) as writer:
        _write_documents(recipe.notes, writer, keep_records, wanted, notes_per_admission, recipe.clean_text)
        manifest = writer.finish(
            code_systems=code_systems,
            dictionary=dictionary,
            manifest={
                "source": recipe.source,
                "options": {"icd_version": version, "min_count": recipe.min_count,
                            "clean_text": recipe.clean_text, **recipe.options},
                "inputs": [input_record(p) for p in
                           [recipe.notes.path, *(t.path for t in recipe.code_tables), recipe.split_file]],
                "counts": {
                    **note_stats,
                    "code_tables": code_stats,
                    "joined_admissions": joined,
                    "codes_before_filter": dict(Counter(counts["system"].to_list())),
                    "codes_after_filter": dict(Counter(kept["system"].to_list())),
                    "admissions_without_kept_codes": joined - len(targets),
                    "admissions_not_in_split_file": not_in_split,
                    "split_file_ids_without_admission": len(splits) - len(documents),
                    "admissions_with_multiple_notes": sum(n > 1 for n in notes_per_admission.values()),
                },
            },
        )
    return Prepared(manifest, writer.report)


def _write_documents(notes: NoteTable, writer: DatasetWriter, keep_records: set[int],
                     wanted: dict, notes_per_admission: Counter, clean: bool) -> None:
    """Second pass over the notes: write kept documents in file order. An admission with several
    notes is written when its last note has been read."""
    pending: dict[int, list[str]] = {}
    size = notes.path.stat().st_size
    with progress_bar(f"writing documents from {notes.path.name}", size, bytes_=True) as update:
        for first, batch, position in _note_batches(notes):
            ids, texts, _ = _decode_batch(notes, batch, first)
            out_ids, out_texts, out_codes, out_splits = [], [], [], []
            for offset, (hadm_id, text) in enumerate(zip(ids, texts)):
                if first + offset not in keep_records:
                    continue
                parts = pending.setdefault(hadm_id, [])
                parts.append(text)
                if len(parts) < notes_per_admission[hadm_id]:
                    continue
                del pending[hadm_id]
                codes, split = wanted[hadm_id]
                out_ids.append(str(hadm_id))
                out_texts.append(notes.separator.join(parts))
                out_codes.append(codes)
                out_splits.append(split)
            if out_ids:
                texts_out = pl.Series(out_texts, dtype=pl.String)
                if clean:
                    texts_out = clean_text_series(texts_out)
                writer.write(out_ids, texts_out.to_arrow(), out_codes, out_splits)
            update(position)


def mimic_iv_recipe(mimic_iv: Path, mimic_iv_note: Path, split_file: Path, *, icd_version: int = 10,
                    min_count: int = 10, clean_text: bool = False) -> tuple[MimicRecipe, CodeDictionary]:
    hosp = Path(mimic_iv) / "hosp"
    if not hosp.is_dir():
        raise ClemError(f"{hosp}: folder not found (--mimic-iv must hold hosp/diagnoses_icd.csv.gz)")
    if icd_version not in (9, 10):
        raise ClemError(f"--icd-version must be 9 or 10, got {icd_version}")
    recipe = MimicRecipe(
        source=f"mimic-iv-icd{icd_version}",
        notes=NoteTable(find_table(Path(mimic_iv_note) / "note", "discharge"), "hadm_id", "text"),
        code_tables=[
            CodeTable(find_table(hosp, "procedures_icd"), system_for(icd_version, False),
                      "hadm_id", "icd_code", "icd_version"),
            CodeTable(find_table(hosp, "diagnoses_icd"), system_for(icd_version, True),
                      "hadm_id", "icd_code", "icd_version"),
        ],
        split_file=Path(split_file),
        min_count=min_count,
        clean_text=clean_text,
    )
    return recipe, CodeDictionary.from_mimic_hosp(hosp)


def mimic_iii_recipe(mimic_iii: Path, split_file: Path, *, subset: str = "full",
                     clean_text: bool = False) -> tuple[MimicRecipe, CodeDictionary]:
    folder = Path(mimic_iii)
    if subset not in ("full", "50"):
        raise ClemError(f"--subset must be 'full' or '50', got '{subset}'")
    recipe = MimicRecipe(
        source=f"mimic-iii-{subset}",
        notes=NoteTable(find_table(folder, "NOTEEVENTS"), "HADM_ID", "TEXT", category_column="CATEGORY",
                        category="Discharge summary", drop_duplicate_texts=False, separator=" "),
        code_tables=[
            CodeTable(find_table(folder, "PROCEDURES_ICD"), CodeSystem.ICD9PCS, "HADM_ID", "ICD9_CODE", None),
            CodeTable(find_table(folder, "DIAGNOSES_ICD"), CodeSystem.ICD9CM, "HADM_ID", "ICD9_CODE", None),
        ],
        split_file=Path(split_file),
        keep_codes=MIMIC_III_TOP_50 if subset == "50" else None,
        clean_text=clean_text,
        options={"subset": subset},
    )
    d_diag = [p for p in (folder / "D_ICD_DIAGNOSES.csv.gz", folder / "D_ICD_DIAGNOSES.csv") if p.is_file()]
    d_proc = [p for p in (folder / "D_ICD_PROCEDURES.csv.gz", folder / "D_ICD_PROCEDURES.csv") if p.is_file()]
    dictionary = CodeDictionary()
    for paths, is_diagnosis in ((d_diag, True), (d_proc, False)):
        if paths:
            dictionary.add_table(_mimic_iii_dictionary(paths[0], is_diagnosis), str(paths[0]))
    return recipe, dictionary


def _mimic_iii_dictionary(path: Path, is_diagnosis: bool) -> dict:
    system = CodeSystem.ICD9CM if is_diagnosis else CodeSystem.ICD9PCS
    frame = read_csv_strings(path, ["ICD9_CODE", "LONG_TITLE"])
    out = {}
    for code, title in frame.select("ICD9_CODE", "LONG_TITLE").iter_rows():
        try:
            out[(system, normalize_code(code, system))] = title or ""
        except (ValueError, TypeError):
            continue
    return out
