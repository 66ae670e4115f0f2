"""CodiEsp (CLEF eHealth 2020) in its official distribution layout:

    DIR/{train,dev,test}/text_files/*.txt       Spanish clinical cases (id = file stem)
    DIR/{train,dev,test}/text_files_en/*.txt    English machine translation, same ids
    DIR/{split}/{split}D.tsv                    id <TAB> ICD-10-CM code (lower case, dotted)
    DIR/{split}/{split}P.tsv                    id <TAB> ICD-10-PCS code (7 chars or 4-char prefix)

`dev` becomes split `val`; a missing split folder is skipped (the public release has no test
codes). With `val_from_train` (a fraction), a stratified share of train becomes `val` instead and
dev becomes `test`: what is tuned (early stopping, threshold, a search over recipes) is then
chosen on notes from train, and dev is left for the report, as in the protocol of Edin et al.
Every text file is a document, also one that no tsv row mentions (empty code list).
Target = P codes, then D codes, as in the MIMIC preparation (procedures first); within each
group the order of first appearance in the tsv, duplicates removed.

Texts are decoded strictly as UTF-8 (a leading byte-order mark is dropped) and kept as they are.
The corpus is small (1,000 cases at most), so everything is held in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clem_icd.codes import CodeDictionary, CodeSystem, normalize_code
from clem_icd.data.dataset import DatasetWriter, Prepared, input_record
from clem_icd.data.io import decode_utf8
from clem_icd.data.split import SPLIT_METHOD, stratified_split
from clem_icd.errors import ClemError, where

SPLIT_FOLDERS = {"train": "train", "dev": "val", "test": "test"}
TEXT_FOLDERS = {"en": "text_files_en", "es": "text_files"}
TASKS = {"P": CodeSystem.ICD10PCS, "D": CodeSystem.ICD10CM}  # target order: procedures first


@dataclass
class CodiEspSplit:
    """One split folder, read: texts by id, code lists by id, and what was counted."""

    folder: Path
    split: str
    texts: dict[str, str] = field(default_factory=dict)
    codes: dict[str, list[str]] = field(default_factory=dict)
    tsv_files: list[Path] = field(default_factory=list)
    text_digest: str = ""
    code_rows: int = 0
    duplicate_code_rows: int = 0


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """'D,P' / ['P'] → the tasks in target order (P before D)."""
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    wanted = {name.strip().upper() for name in names if name.strip()}
    unknown = wanted - set(TASKS)
    if not wanted or unknown:
        raise ClemError(f"--tasks must be D, P or D,P (got '{','.join(names)}')")
    return [task for task in TASKS if task in wanted]


def read_texts(text_dir: Path) -> tuple[dict[str, str], str]:
    """id → text for every *.txt file, and one sha256 over the sorted file names and bytes."""
    digest = hashlib.sha256()
    texts: dict[str, str] = {}
    for path in sorted(text_dir.glob("*.txt")):
        data = path.read_bytes()
        # Length-prefix name and content so that different file sets cannot hash alike.
        for part in (path.name.encode(), data):
            digest.update(len(part).to_bytes(8, "little"))
            digest.update(part)
        text = decode_utf8(path, data)
        if not text.strip():
            raise ClemError(f"{where(path)}: empty text file")
        texts[path.stem] = text
    return texts, digest.hexdigest()


def read_code_rows(path: Path) -> list[tuple[int, str, str]]:
    """(1-based line, id, raw code) for each non-blank line of an id<TAB>code file."""
    rows = []
    for number, line in enumerate(decode_utf8(path, path.read_bytes()).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = [part.strip() for part in line.split("\t")]
        if len(fields) != 2 or not all(fields):
            raise ClemError(f"{where(path, number)}: expected 'id<TAB>code' "
                            f"(found {len(fields)} tab-separated field(s))")
        rows.append((number, fields[0], fields[1]))
    return rows


def read_split(folder: Path, split: str, language: str, tasks: list[str],
               code_systems: dict[str, CodeSystem]) -> CodiEspSplit:
    """Read one split folder; records the system of each code in `code_systems`."""
    name = folder.name
    text_dir = folder / TEXT_FOLDERS[language]
    if not text_dir.is_dir():
        raise ClemError(f"{text_dir}: folder not found (the {language} texts of the {name} split)")
    result = CodiEspSplit(folder=folder, split=split)
    result.texts, result.text_digest = read_texts(text_dir)
    result.codes = {doc_id: [] for doc_id in result.texts}
    for task in tasks:
        tsv = folder / f"{name}{task}.tsv"
        if not tsv.is_file():
            raise ClemError(f"{tsv}: file not found (codes of task {task})")
        result.tsv_files.append(tsv)
        seen: set[tuple[str, str]] = set()
        for number, doc_id, raw in read_code_rows(tsv):
            if doc_id not in result.texts:
                raise ClemError(f"{where(tsv, number)}: document '{doc_id}' has no text file in {text_dir}")
            try:
                code = normalize_code(raw, TASKS[task])
            except ValueError as exc:  # its message quotes the value: shown only if short, one token
                shown = str(exc) if len(raw) <= 10 and len(raw.split()) == 1 else (
                    f"a value of {len(raw)} characters is not a well-formed {TASKS[task].value} code")
                raise ClemError(f"{where(tsv, number)}: {shown}") from None
            # Canonical CM codes longer than 3 characters are dotted and PCS codes never, so
            # only a 3-character code could be in both files; it would be an ambiguous label.
            if code_systems.setdefault(code, TASKS[task]) is not TASKS[task]:
                raise ClemError(f"{where(tsv, number)}: code '{code}' also occurs as "
                                f"{code_systems[code].value}; it cannot be both")
            result.code_rows += 1
            if (doc_id, code) in seen:
                result.duplicate_code_rows += 1
                continue
            seen.add((doc_id, code))
            result.codes[doc_id].append(code)
    return result


def find_split_folders(codiesp_dir: Path) -> list[Path]:
    if not codiesp_dir.is_dir():
        raise ClemError(f"{codiesp_dir}: folder not found")
    folders = [codiesp_dir / name for name in SPLIT_FOLDERS if (codiesp_dir / name).is_dir()]
    if not folders:
        raise ClemError(f"{codiesp_dir}: no train, dev or test folder (expected the official "
                        "CodiEsp layout, e.g. train/text_files_en/*.txt and train/trainD.tsv)")
    return folders


def check_unique_ids(splits: list[CodiEspSplit], language: str) -> None:
    first: dict[str, Path] = {}
    for part in splits:
        for doc_id in part.texts:
            if doc_id in first:
                other = first[doc_id]
                raise ClemError(f"{part.folder / TEXT_FOLDERS[language] / (doc_id + '.txt')}: "
                                f"document id also in {other}")
            first[doc_id] = part.folder / TEXT_FOLDERS[language]


def prepare_codiesp(codiesp_dir: Path, out: Path, *, language: str = "en",
                    tasks: str | Sequence[str] = ("D", "P"), pcs_table: Path | None = None,
                    val_from_train: float = 0.0, seed: int = 42, overwrite: bool = False) -> Prepared:
    """Write the prepared dataset to `out`; returns its manifest and code check. `val_from_train`
    > 0: that share of train (iterative stratification, `seed`) becomes val, and dev becomes test."""
    if language not in TEXT_FOLDERS:
        raise ClemError(f"--language must be 'en' or 'es', got '{language}'")
    if not 0.0 <= val_from_train < 1.0:
        raise ClemError(f"--val-from-train must be a fraction in [0, 1), got {val_from_train}")
    task_list = parse_tasks(tasks)
    codiesp_dir = Path(codiesp_dir)
    # ICD-10-CM and ICD-10-PCS descriptions come with the packages; a d_icd_procedures table,
    # when given, adds codes and takes precedence.
    dictionary = CodeDictionary.from_files(d_icd_procedures=Path(pcs_table) if pcs_table else None)
    code_systems: dict[str, CodeSystem] = {}
    splits = [read_split(folder, SPLIT_FOLDERS[folder.name], language, task_list, code_systems)
              for folder in find_split_folders(codiesp_dir)]
    check_unique_ids(splits, language)
    folders = {part.folder.name for part in splits}
    if val_from_train:
        if "train" not in folders:
            raise ClemError(f"{codiesp_dir}: --val-from-train needs a train/ folder")
        if "dev" in folders and "test" in folders:
            raise ClemError(f"{codiesp_dir}: --val-from-train makes dev the test split, but there is a "
                            f"test/ folder too; leave one of them out")

    with DatasetWriter(out, overwrite=overwrite) as writer:
        for part in splits:
            ids = sorted(part.texts)
            labels = [part.split] * len(ids)
            if val_from_train and part.folder.name == "train":
                labels = stratified_split([part.codes[i] for i in ids], seed, (1 - val_from_train, val_from_train, 0.0))
            elif val_from_train and part.folder.name == "dev":
                labels = ["test"] * len(ids)
            writer.write(ids, [part.texts[i] for i in ids], [part.codes[i] for i in ids], labels)
        manifest = writer.finish(
            code_systems=code_systems,
            dictionary=dictionary,
            manifest={
                "source": "codiesp",
                "options": {"language": language, "tasks": task_list,
                            "target_order": "P codes, then D codes",
                            **({"val_from_train": val_from_train, "seed": seed, "split_method": SPLIT_METHOD,
                                "dev_split": "test"} if val_from_train else {})},
                "inputs": _inputs(splits, language) + ([input_record(Path(pcs_table))] if pcs_table else []),
                "counts": {
                    "text_files": {p.split: len(p.texts) for p in splits},
                    "code_rows": {p.split: p.code_rows for p in splits},
                    "duplicate_code_rows": {p.split: p.duplicate_code_rows for p in splits},
                },
            },
        )
    return Prepared(manifest, writer.report)


def _inputs(splits: list[CodiEspSplit], language: str) -> list[dict]:
    """input_record for each tsv file; per split one entry for all its text files together."""
    records = []
    for part in splits:
        records += [input_record(tsv) for tsv in part.tsv_files]
        text_dir = part.folder / TEXT_FOLDERS[language]
        records.append({"path": str(text_dir.resolve()), "files": len(part.texts),
                        "sha256": part.text_digest,
                        "sha256_of": "sorted *.txt files: 8-byte length + name, 8-byte length + bytes"})
    return records
