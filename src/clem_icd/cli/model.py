"""`clem-icd train`, `clem-icd evaluate`: the model's life cycle."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def train(
    config: Path = typer.Option(None, "--config", "-c", help="Recipe (YAML), e.g. "
                                "configs/mimiciv_icd10/clem_modernbert_base.yaml. Keys: see TrainConfig "
                                "in clem_icd/training/config.py."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset folder (clem-icd prepare ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder for the trained model, "
                                "metrics.jsonl (per epoch) and metrics.json."),
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Override config keys, "
                                          "e.g. learning_rate=3e-5 epochs=5 head=cross."),
) -> None:
    """Train a coder (or the TF-IDF baseline with model=tfidf). Multi-GPU / multi-node: run it under
    `accelerate launch -m clem_icd.cli train ...` (DDP, FSDP or DeepSpeed from your accelerate config)."""
    from clem_icd.training.config import load_train_config
    from clem_icd.training.trainer import train as run_training

    metrics = run_training(load_train_config(config, overrides or []), data, output)
    if metrics:
        val = metrics.get("val", {})
        console.print(f"[green]saved[/] {output}: val micro-F1 {100 * val.get('f1_micro', 0):.1f}, "
                      f"macro-F1 {100 * val.get('f1_macro', 0):.1f}, mAP {100 * val.get('map', 0):.1f} "
                      f"at threshold {metrics.get('threshold', 0.5):.2f}")


def evaluate(
    model: Path = typer.Option(..., "--model", "-m", help="Trained model folder."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset folder."),
    split: str = typer.Option("test", "--split", help="Split to evaluate: train, val or test."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.json, per-code CSVs and "
                             "CodiEsp ranking TSVs (id, code, best first)."),
    baseline: str = typer.Option("auto", "--baseline", help="TF-IDF baseline beside the model: 'auto' "
                                 "(train one on the train split, cached in OUT/baseline_tfidf), a model "
                                 "folder, or 'none'."),
) -> None:
    """Evaluate with the protocol of Edin et al. 2023: only codes present in the split, documents
    without positives left out, metrics at the val-tuned threshold and at 0.5."""
    from clem_icd.evaluation.evaluate import evaluate as run_evaluation

    run_evaluation(model, data, split, out, baseline=baseline, console=Console())
    console.print(f"[green]wrote[/] {out}/metrics.json")


def demo(
    output: Path = typer.Option(Path("outputs/demo"), "--output", "-o", help="Folder for the corpus, "
                                "the trained model and the evaluation."),
    data: Path = typer.Option(None, "--data", help="Use this prepared dataset instead of the synthetic "
                              "corpus (e.g. one made by `clem-icd prepare codiesp`)."),
    documents: int = typer.Option(320, "--documents", help="Size of the synthetic corpus."),
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Override keys of "
                                          "configs/demo.yaml, e.g. epochs=2."),
) -> None:
    """Offline demo: synthetic notes → train CLEM-ICD (pretrained MiniLM) → evaluate beside TF-IDF →
    code a new note. Minutes on 2 CPU cores; no download."""
    from clem_icd.demo import run_demo

    run_demo(output, dataset=data, overrides=overrides or [], documents=documents, console=Console())
