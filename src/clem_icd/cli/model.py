"""`clem-icd train`, `clem-icd evaluate`: the model's life cycle."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True, soft_wrap=True)


def train(
    config: str = typer.Option(None, "--config", "-c", help="Recipe: a shipped name such as "
                               "mimic/clem_modernbert_base or codiesp/minilm_cross_desc (`clem-icd recipes` "
                               "lists them) or a YAML file. Sections model / data / optim / train: see "
                               "docs/recipes.md."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset folder (clem-icd prepare ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder for the trained model, "
                                "metrics.jsonl (per epoch) and metrics.json."),
    overrides: list[str] = typer.Argument(None, metavar="[SECTION.KEY=VALUE]...", help="Override recipe "
                                          "keys, e.g. optim.learning_rate=3e-5 train.epochs=5 model.head=cross."),
) -> None:
    """Train a coder (or the TF-IDF baseline: a recipe with model.kind tfidf). Multi-GPU / multi-node:
    `accelerate launch -m clem_icd.cli train ...` (DDP, FSDP or DeepSpeed from your accelerate config)."""
    from clem_icd.training.recipe import load_recipe
    from clem_icd.training.trainer import train as run_training

    metrics = run_training(load_recipe(config, overrides or []), data, output)
    if metrics:
        val = metrics.get("val", {})
        console.print(f"[green]saved[/] {output}: val micro-F1 {100 * val.get('f1_micro', 0):.1f}, "
                      f"macro-F1 {100 * val.get('f1_macro', 0):.1f}, mAP {100 * val.get('map', 0):.1f} "
                      f"at threshold {metrics.get('threshold', 0.5):.2f}")


def recipes(
    name: str = typer.Argument(None, help="Print this recipe as it is resolved (inherit applied, "
                               "defaults filled in) instead of listing them."),
) -> None:
    """The training recipes shipped with CLEM-ICD: name and what it is (its first line)."""
    import yaml

    from clem_icd.training.recipe import load_recipe, packaged_recipes

    if name:
        typer.echo(yaml.safe_dump(load_recipe(name).to_dict(), sort_keys=False), nl=False)
        return
    table = Table("recipe", "what it is")
    for recipe, path in packaged_recipes().items():
        first = path.read_text().splitlines()[0]  # every shipped recipe opens with a one-line summary
        table.add_row(recipe, first.lstrip("# ").strip())
    Console().print(table)


def evaluate(
    model: Path = typer.Option(..., "--model", "-m", help="Trained model folder."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset folder."),
    split: str = typer.Option("test", "--split", help="Split to evaluate: train, val or test."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.json, per-code CSVs and "
                             "CodiEsp ranking TSVs (id, code, best first)."),
    baseline: str = typer.Option("auto", "--baseline", help="TF-IDF baseline beside the model: 'auto' "
                                 "(train one on the train split, cached in OUT/baseline_tfidf), a model "
                                 "folder, or 'none'."),
    baseline_recipe: str = typer.Option("mimic/tfidf", "--baseline-recipe", help="For --baseline auto: "
                                        "the TF-IDF recipe (model.kind tfidf) whose hyperparameters the "
                                        "baseline is fitted with; a shipped name or a YAML file."),
) -> None:
    """Evaluate with the protocol of Edin et al. 2023: only codes present in the split, documents
    without positives left out, metrics at the val-tuned threshold and at 0.5."""
    from clem_icd.errors import ClemError
    from clem_icd.evaluation.evaluate import evaluate as run_evaluation
    from clem_icd.training.recipe import load_recipe

    recipe = load_recipe(baseline_recipe)
    if recipe.kind != "tfidf":
        raise ClemError(f"--baseline-recipe {baseline_recipe}: model.kind is {recipe.kind}, not tfidf")
    run_evaluation(model, data, split, out, baseline=baseline, baseline_options=recipe.model, console=Console())
    console.print(f"[green]wrote[/] {out}/metrics.json")


def demo(
    output: Path = typer.Option(Path("outputs/demo"), "--output", "-o", help="Folder for the corpus, "
                                "the trained model and the evaluation."),
    data: Path = typer.Option(None, "--data", help="Use this prepared dataset instead of the synthetic "
                              "corpus (e.g. one made by `clem-icd prepare codiesp`)."),
    documents: int = typer.Option(320, "--documents", help="Size of the synthetic corpus."),
    overrides: list[str] = typer.Argument(None, metavar="[SECTION.KEY=VALUE]...", help="Override keys of "
                                          "the demo recipe (`clem-icd recipes demo`), e.g. train.epochs=2."),
) -> None:
    """Offline demo: synthetic notes → train CLEM-ICD (pretrained MiniLM) → evaluate beside TF-IDF →
    code a new note. Minutes on 2 CPU cores; no download."""
    from clem_icd.demo import run_demo

    run_demo(output, dataset=data, overrides=overrides or [], documents=documents, console=Console())
