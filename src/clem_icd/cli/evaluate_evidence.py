"""`clem-icd evaluate-evidence`: how well predicted evidence spans match gold evidence."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def evaluate_evidence(
    gold: Path = typer.Option(..., "--gold", "-g", help="Gold evidence: a CodiEsp-X file (e.g. "
                              "dev/devX.tsv) or an MDACE folder / annotation file "
                              "(data/Inpatient/ICD-10/1.0)."),
    predictions: Path = typer.Option(..., "--pred", "-p", help="Predicted evidence: the JSONL of `clem-icd "
                                     "predict --explain ...`, or a CodiEsp-X predictions TSV "
                                     "(id, 'start end', label, code)."),
    texts: list[str] = typer.Option(..., "--texts", help="The notes the offsets refer to (words are "
                                    "counted in them): a folder of text files (CodiEsp text_files), or a "
                                    "JSONL / CSV(.gz) / Parquet file; for MDACE, MIMIC-III "
                                    "NOTEEVENTS.csv.gz with --id-field ROW_ID --text-field TEXT."),
    layout: str = typer.Option("auto", "--layout", help="codiesp-x, mdace, or auto (a .tsv gold file is "
                               "CodiEsp-X, a folder or .json is MDACE)."),
    id_field: str = typer.Option("id", "--id-field", help="Id field of table --texts."),
    text_field: str = typer.Option("text", "--text-field", help="Text field of table --texts."),
    out: Path = typer.Option(None, "--out", "-o", help="Also write the metrics to this JSON file."),
) -> None:
    """Token-level (word) precision / recall / F1 and IoU of evidence spans against gold spans,
    per (note, code) with gold evidence - over all of them and over those the model explained -
    and, for CodiEsp-X, the track's official span matching (10-character tolerance)."""
    from clem_icd.atomic import write_json_atomic
    from clem_icd.errors import ClemError
    from clem_icd.evaluation import evidence_metrics
    from clem_icd.inference.inputs import read_notes

    if layout == "auto":
        layout = "codiesp-x" if gold.is_file() and gold.suffix.lower() == ".tsv" else "mdace"
    if layout == "codiesp-x":
        gold_spans, gold_whole = evidence_metrics.read_codiesp_x(gold)
    elif layout == "mdace":
        gold_spans = gold_whole = evidence_metrics.read_mdace(gold)
    else:
        raise ClemError(f"--layout must be codiesp-x, mdace or auto, got '{layout}'")
    if not predictions.is_file():
        raise ClemError(f"{predictions}: not found")
    if predictions.suffix.lower() == ".tsv":
        predicted, _ = evidence_metrics.read_codiesp_x(predictions)
    else:
        predicted = evidence_metrics.read_prediction_jsonl(predictions)
    wanted = {note for note, _ in gold_spans}
    notes = {r.id: r.text for r in read_notes(texts, id_field=id_field, text_field=text_field)
             if r.error is None and r.id in wanted}
    metrics = {"layout": layout, "tokens": evidence_metrics.token_metrics(gold_spans, predicted, notes)}
    if layout == "codiesp-x":
        metrics["codiesp_x"] = evidence_metrics.codiesp_x_metrics(gold_whole, predicted)
    if out is not None:
        write_json_atomic(metrics, out)

    table = Table(title=f"evidence vs {gold.name}")
    for column in ("rows", "precision", "recall", "F1", "IoU"):
        table.add_column(column, justify="right")
    table.add_column("", justify="left")
    for name, values in metrics["tokens"].items():
        table.add_row(str(values["rows"]), *(f"{100 * values[k]:.1f}" for k in ("precision", "recall", "f1", "iou")),
                      f"words, {name} gold (note, code)")
    if "codiesp_x" in metrics:
        x = metrics["codiesp_x"]
        table.add_row(str(x["gold_pairs"]), *(f"{100 * x[k]:.1f}" for k in ("precision", "recall", "f1")), "",
                      "CodiEsp-X official (pairs)")
    Console().print(table)
