"""`clem-icd fuse`: an ensemble of trained models (rank fusion), saved as a model folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from clem_icd.cli import options

console = Console(stderr=True, soft_wrap=True)


def fuse(
    models: list[Path] = typer.Option(..., "--model", "-m", help="A model folder (any kind: CLEM-ICD, "
                                      "TF-IDF, fused); give --model once per member, at least twice."),
    weights: list[float] = typer.Option(None, "--weight", "-w", help="Weight of each member, in --model "
                                        "order (default: 1 each)."),
    method: str = typer.Option("rrf", "--method", help="rrf: weighted reciprocal rank fusion, "
                               "sum of w / (k + rank) (uncalibrated members mix well); mean: weighted mean of "
                               "the members' probabilities."),
    k: float = typer.Option(60.0, "--k", help="The rank constant of rrf (60, as Cormack et al. 2009): larger "
                            "k flattens the weight of the top ranks."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset folder whose val split tunes the fused "
                              "model's threshold."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: the fused model, with copies of the "
                             "member folders in members/ (self-contained) and metrics.json."),
    device: str = options.DEVICE,
    precision: str = typer.Option("auto", "--precision", help="Of the neural members: auto (the precision "
                                  "each one's training scored val in, as its folder records, else bf16 where the "
                                  "device runs it natively, else fp32), fp32, bf16 or fp16."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Notes per forward pass of a neural member "
                                   "(default: the batches its training scored val in, else 8); ignored with "
                                   "--max-batch-tokens."),
    max_batch_tokens: int = typer.Option(None, "--max-batch-tokens", help="Batch neural members by a token "
                                         "budget: notes x the longest one's tokens <= N per forward pass."),
) -> None:
    """Fuse trained models into one model folder that predict and evaluate use like any other:
    per note the members' rankings are fused (or their probabilities averaged), and the threshold
    is tuned on val (argmax of micro-F1, the protocol's rule). Prints the val micro-F1 and mAP of
    each member (at its own threshold) and of the fusion. Neural members score val on the
    accelerator; under `accelerate launch -m clem_icd.cli fuse ...` the notes are split across
    the processes and the main process writes the folder."""
    from clem_icd.data.dataset import PreparedDataset
    from clem_icd.errors import ClemError
    from clem_icd.evaluation.report import json_value
    from clem_icd.evaluation.scoring import Scorer, ScoringOptions
    from clem_icd.fusion import METHODS, FusedModel, fit_threshold
    from clem_icd.loading import load_model

    # The options are checked before any model loads.
    if len(models) < 2:
        raise ClemError("--model: give at least two model folders to fuse")
    if weights and len(weights) != len(models):
        raise ClemError(f"--weight: {len(weights)} weight(s) for {len(models)} --model folders (one each, in order)")
    if weights and (not all(0 <= w < float("inf") for w in weights) or sum(weights) <= 0):
        raise ClemError(f"--weight: weights must be finite, at least 0 and not all 0, got {weights}")
    if method not in METHODS:
        raise ClemError(f"--method must be one of {', '.join(METHODS)}, got '{method}'")
    if not 0 <= k < float("inf"):
        raise ClemError(f"--k must be at least 0, got {k}")
    scorer = Scorer(ScoringOptions(device=device, precision=precision, batch_size=batch_size,
                                   max_batch_tokens=max_batch_tokens))
    dataset = PreparedDataset.load(data)
    fused = FusedModel([load_model(m, device=scorer.device) for m in models], weights or None, k=k, method=method,
                       sources=models)
    fused.check_destination(out)  # before the members read val
    metrics = fit_threshold(fused, dataset, score=scorer)
    if not scorer.processes.is_main:  # it has scored its share of val; the main process writes
        return

    table = Table("model", "threshold", "val micro-F1", "val mAP", title="Validation (%)")
    for i, (folder, row) in enumerate(zip(models, metrics["members"]), start=1):
        console.print(f"member {i}: {folder}", markup=False, highlight=False)  # whole: a table cell would cut it
        table.add_row(f"member {i}", f"{row['threshold']:.2f}", f"{100 * row['f1_micro']:.1f}", f"{100 * row['map']:.1f}")
    val = metrics["val"]
    table.add_row(f"fused ({method})", f"{metrics['threshold']:.2f}", f"{100 * val['f1_micro']:.1f}",
                  f"{100 * val['map']:.1f}")
    Console().print(table)
    fused.save_pretrained(out, metrics={
        "threshold": metrics["threshold"], "dataset": str(dataset.path),
        "val": {key: json_value(v) for key, v in val.items()},
        "members": [{"folder": str(folder), **{key: json_value(v) for key, v in row.items()}}
                    for folder, row in zip(models, metrics["members"])]})
    console.print(f"[green]saved[/] {out}")
