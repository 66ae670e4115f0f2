"""`clem-icd prepare ...`: turn a source into a prepared dataset folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from clem_icd.cli.work import DB, _workbench
from clem_icd.data.dataset import Prepared
from clem_icd.data.mimic import mimic_iii_recipe, mimic_iv_recipe, prepare_mimic

app = typer.Typer(help="Prepare a dataset folder (documents.parquet, codes.tsv, manifest.json).",
                  no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)

OUT = typer.Option(..., "--out", "-o", help="Output folder; written atomically (temp folder, then rename).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing output folder.")
CLEAN = typer.Option(False, "--clean-text",
                     help="Apply the Edin et al. 2023 text cleaning (lower case, non-alphanumerics to "
                          "spaces, digit-only tokens removed). Default: raw text.")


def report(prepared: Prepared, out: Path) -> None:
    """One summary line per prepared dataset, plus the code check."""
    counts = prepared.manifest["counts"]
    splits = " / ".join(f"{k} {v:,}" for k, v in counts["by_split"].items())
    console.print(f"[green]wrote[/] {out}: {counts['documents']:,} documents ({splits}), {counts['codes']:,} codes")
    summary = prepared.report.summary()
    if summary:
        console.print(f"[yellow]warning:[/] {summary}")


@app.command("mimic-iv")
def mimic_iv(
    mimic_iv: Path = typer.Option(..., "--mimic-iv", help="MIMIC-IV folder holding hosp/diagnoses_icd.csv.gz and "
                                  "hosp/procedures_icd.csv.gz (d_icd_* tables there are used for descriptions)."),
    mimic_iv_note: Path = typer.Option(..., "--mimic-iv-note", help="MIMIC-IV-Note folder holding note/discharge.csv.gz."),
    split_file: Path = typer.Option(..., "--split-file", help="Published split file (_id = hadm_id, split), e.g. "
                                    "mimiciv_icd10_split.feather of Edin et al. 2023."),
    out: Path = OUT,
    icd_version: int = typer.Option(10, "--icd-version", help="ICD version of the codes to keep: 10 or 9."),
    min_count: int = typer.Option(10, "--min-count", help="Keep a code only if at least this many admissions "
                                  "(with a note and a code) have it; counted per diagnoses/procedures."),
    clean_text: bool = CLEAN,
    overwrite: bool = OVERWRITE,
) -> None:
    """MIMIC-IV ICD-10 (or ICD-9) exactly as Edin et al. 2023. On the real data: 122,279 admissions
    (89,099 / 13,378 / 19,802) and 7,942 codes for ICD-10."""
    recipe, dictionary = mimic_iv_recipe(mimic_iv, mimic_iv_note, split_file, icd_version=icd_version,
                                         min_count=min_count, clean_text=clean_text)
    report(prepare_mimic(recipe, out, dictionary, overwrite=overwrite), out)


@app.command("mimic-iii")
def mimic_iii(
    mimic_iii: Path = typer.Option(..., "--mimic-iii", help="MIMIC-III v1.4 folder with NOTEEVENTS.csv.gz, "
                                   "DIAGNOSES_ICD.csv.gz and PROCEDURES_ICD.csv.gz."),
    split_file: Path = typer.Option(..., "--split-file", help="mimiciii_full_splits.feather or mimiciii_50_splits.feather."),
    out: Path = OUT,
    subset: str = typer.Option("full", "--subset", help="'full' (all codes) or '50' (the 50 codes of Mullenbach et al.)."),
    clean_text: bool = CLEAN,
    overwrite: bool = OVERWRITE,
) -> None:
    """MIMIC-III full or 50 (discharge summaries + addenda, ICD-9) as Edin et al. 2023."""
    recipe, dictionary = mimic_iii_recipe(mimic_iii, split_file, subset=subset, clean_text=clean_text)
    report(prepare_mimic(recipe, out, dictionary, overwrite=overwrite), out)


@app.command("codiesp")
def codiesp(
    codiesp_dir: Path = typer.Option(..., "--codiesp-dir", help="CodiEsp folder in the official layout: "
                                     "train/, dev/ and/or test/, each with text_files/, text_files_en/ and "
                                     "{split}D.tsv, {split}P.tsv. dev becomes split 'val'; missing split "
                                     "folders are skipped."),
    out: Path = OUT,
    language: str = typer.Option("en", "--language", help="'en' (text_files_en, machine translation) or "
                                 "'es' (text_files, the Spanish originals)."),
    tasks: str = typer.Option("D,P", "--tasks", help="Which codes to use: D (ICD-10-CM diagnoses), P "
                              "(ICD-10-PCS procedures) or D,P. Target order: P codes, then D codes."),
    pcs_table: Path | None = typer.Option(None, "--pcs-table", help="Optional d_icd_procedures table "
                                          "(MIMIC-IV layout: icd_code, icd_version, long_title) that adds PCS "
                                          "codes and takes precedence. Not needed: PCS descriptions come with "
                                          "the CMS table of the 'drg' package, CM ones from simple-icd-10-cm."),
    val_from_train: float = typer.Option(0.0, "--val-from-train", help="Share of train (e.g. 0.2) that becomes "
                                         "val, split by iterative multi-label stratification with --seed; dev "
                                         "then becomes test, so that what is tuned on val never sees dev. "
                                         "0: dev is val."),
    seed: int = typer.Option(42, "--seed", help="Seed of the --val-from-train split."),
    overwrite: bool = OVERWRITE,
) -> None:
    """CodiEsp (CLEF eHealth 2020, CC BY 4.0): clinical case reports with ICD-10-CM / ICD-10-PCS codes."""
    from clem_icd.data.codiesp import prepare_codiesp

    report(prepare_codiesp(codiesp_dir, out, language=language, tasks=tasks, pcs_table=pcs_table,
                           val_from_train=val_from_train, seed=seed, overwrite=overwrite), out)


@app.command("custom")
def custom(
    input_file: Path = typer.Option(..., "--input", "-i", help="Table of notes: .csv, .tsv, .jsonl/.ndjson or "
                               ".parquet. Rows with the same id and text are merged (long format)."),
    out: Path = OUT,
    id_column: str = typer.Option("id", "--id-column", help="Column with the document id."),
    text_column: str = typer.Option("text", "--text-column", help="Column with the note text."),
    codes_column: str = typer.Option("codes", "--codes-column", help="Column with the codes: a list of "
                                     "strings or one string separated by --code-separator; empty = no codes."),
    split_column: str | None = typer.Option(None, "--split-column", help="Column with train/val/test "
                                            "(dev, validation = val). Default: 'split' when the file has it; "
                                            "otherwise an 80/10/10 split is made by iterative multi-label "
                                            "stratification with --seed."),
    code_separator: str = typer.Option(";", "--code-separator", help="Separator of codes within a string."),
    code_system: str = typer.Option("auto", "--code-system", help="auto (ICD-10-CM or ICD-10-PCS told apart "
                                    "per code by its shape), icd10cm, icd10pcs, icd9cm or icd9pcs."),
    seed: int = typer.Option(42, "--seed", help="Seed of the stratified split (used without a split column)."),
    d_icd_diagnoses: Path | None = typer.Option(None, "--d-icd-diagnoses", help="Optional d_icd_diagnoses "
                                                "table (MIMIC-IV layout) for ICD-9 diagnoses or ICD-10-CM codes retired "
                                                "from the current CMS list."),
    d_icd_procedures: Path | None = typer.Option(None, "--d-icd-procedures", help="Optional "
                                                 "d_icd_procedures table (MIMIC-IV layout) for ICD-9 procedures "
                                                 "or extra / retired PCS codes; ICD-10-PCS is known without it."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Your own notes with codes (CSV, TSV, JSONL or Parquet)."""
    from clem_icd.data.custom import Columns, prepare_custom

    columns = Columns(id=id_column, text=text_column, codes=codes_column, split=split_column)
    prepared = prepare_custom(input_file, out, columns=columns, code_separator=code_separator,
                              code_system=code_system, seed=seed, d_icd_diagnoses=d_icd_diagnoses,
                              d_icd_procedures=d_icd_procedures, overwrite=overwrite)
    report(prepared, out)


@app.command("feedback")
def feedback(
    db: str = DB,
    out: Path = OUT,
    audited_only: bool = typer.Option(False, "--audited-only", help="Only audited notes (default: coded and "
                                      "audited)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the 80/10/10 split (iterative multi-label "
                             "stratification on the final codes)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """The workbench's finished notes with their final codes (accepted + added), for `clem-icd train`
    (`--init-from` a model to continue from). Notes whose text was purged are skipped and counted."""
    from clem_icd.data.feedback import prepare_feedback

    database = _workbench().open_database(db)  # first: without the 'work' extra, its one-line message
    from clem_icd.workbench.feedback import finished_notes, source_record

    statuses = ("audited",) if audited_only else ("coded", "audited")
    prepared = prepare_feedback(finished_notes(database, statuses), out, where=f"--db {database.name}",
                                database=source_record(database, statuses), options={"audited_only": audited_only},
                                seed=seed, overwrite=overwrite)
    purged = prepared.manifest["counts"]["notes_text_purged"]
    if purged:
        console.print(f"[yellow]skipped[/] {purged:,} of {prepared.manifest['counts']['notes_finished']:,} "
                      "finished note(s): their text was purged, so there is nothing to learn from")
    report(prepared, out)


@app.command("mdace-notes")
def mdace_notes(
    mdace: Path = typer.Option(..., "--mdace", help="MDACE annotation folder, e.g. MDACE/data/Inpatient/ICD-10/1.0."),
    noteevents: Path = typer.Option(..., "--noteevents", help="MIMIC-III NOTEEVENTS.csv(.gz): the notes "
                                    "MDACE's offsets refer to (ROW_ID = MDACE note_id)."),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL file of the annotated notes (id = ROW_ID, text) "
                             "to run `clem-icd predict --explain ...` on; written atomically."),
) -> None:
    """The MIMIC-III notes that MDACE annotates with code evidence, as JSONL for `predict`; then
    `clem-icd evaluate-evidence --gold MDACE_DIR --texts OUT` scores the evidence."""
    import json

    from clem_icd.atomic import write_text_atomic
    from clem_icd.errors import ClemError
    from clem_icd.evaluation.evidence_metrics import read_mdace
    from clem_icd.inference.inputs import read_notes

    wanted = {note for note, _ in read_mdace(mdace)}
    found = {}
    for record in read_notes([str(noteevents)], id_field="ROW_ID", text_field="TEXT"):
        if record.id in wanted and record.error is None:
            found[record.id] = record.text
    missing = sorted(wanted - set(found), key=lambda x: (len(x), x))
    if missing:
        raise ClemError(f"{noteevents}: {len(missing)} of the {len(wanted)} MDACE notes are not there "
                        f"(ROW_ID {', '.join(missing[:3])}); is it MIMIC-III v1.4 NOTEEVENTS?")
    order = sorted(found, key=lambda x: (len(x), x))
    write_text_atomic("".join(json.dumps({"id": i, "text": found[i]}) + "\n" for i in order), out)
    console.print(f"[green]wrote[/] {out}: {len(order)} MDACE notes")
