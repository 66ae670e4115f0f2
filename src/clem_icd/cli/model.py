"""`clem-icd train`, `clem-icd evaluate`: the model's life cycle."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from clem_icd.cli import options

console = Console(stderr=True, soft_wrap=True)
RESUME_LATEST = "\0latest"  # what a bare --resume becomes (bare_resume): no path is spelt so


def bare_resume(args: list[str]) -> list[str]:
    """`--resume` takes an optional value, which click options cannot: a `--resume` that is last,
    or followed by another option or a section.key=value override, gets RESUME_LATEST."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        following = args[i + 1] if i + 1 < len(args) else None
        if arg == "--resume" and (following is None or following.startswith("-") or "=" in following):
            out.append(RESUME_LATEST)
    return out


def train(
    ctx: typer.Context,
    config: str = typer.Option(None, "--config", "-c", help="Recipe: a shipped name such as "
                               "mimic/clem_modernbert_base or codiesp/minilm_cross_desc (`clem-icd recipes` "
                               "lists them) or a YAML file. Sections model / data / optim / train: see "
                               "docs/recipes.md."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset folder (clem-icd prepare ...)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder for the trained model, "
                                "metrics.jsonl (per epoch) and metrics.json."),
    overrides: list[str] = typer.Argument(None, metavar="[SECTION.KEY=VALUE]...", help="Override recipe "
                                          "keys, e.g. optim.learning_rate=3e-5 train.epochs=5 model.head=cross."),
    resume: str = typer.Option(None, "--resume", metavar="[PATH]",
                               help="Continue an interrupted training: from the newest usable checkpoint in "
                               "the output folder (starting afresh if there is none), or from checkpoint "
                               "folder PATH. The recipe and dataset must be the same; train.epochs may be "
                               "raised."),
    init_from: Path = typer.Option(None, "--init-from", help="Fine-tune this trained model folder: its "
                                   "encoder, head and codes are kept, the dataset's codes it lacks are added "
                                   "(queries from their descriptions). The recipe's architecture must match "
                                   "the model's (docs/recipes.md)."),
    seeds: str = typer.Option(None, "--seeds", metavar="N,N,...", help="Train once per seed, e.g. 1,2,3: into "
                              "OUTPUT/seed-N with train.seed=N, then the mean ± sd of the val metrics in "
                              "OUTPUT/seeds.json and seeds.md (clem-icd report reads them). With --resume each "
                              "seed folder resumes and a finished one is kept."),
) -> None:
    """Train a coder (or the TF-IDF baseline: a recipe with model.kind tfidf). Multi-GPU / multi-node:
    `accelerate launch -m clem_icd.cli train ...` (DDP, FSDP or DeepSpeed from your accelerate config,
    docs/distributed.md). The output folder's command.json records the command that made it."""
    from clem_icd.cli.record import record_command
    from clem_icd.training.recipe import load_recipe
    from clem_icd.training.trainer import train as run_training

    resume_from = False if resume is None else True if resume == RESUME_LATEST else Path(resume)
    if seeds is not None:
        _train_seeds(ctx, config, data, output, overrides or [], resume_from, init_from, seeds)
        return
    metrics = run_training(load_recipe(config, overrides or []), data, output, resume=resume_from,
                           init_from=init_from)
    if metrics:  # the main process
        # Without --resume: a resumed run ends as an uninterrupted one (clem_icd.run_record).
        record_command(output, ctx, drop=("resume",), resumed=resume_from is not False)
        val = metrics.get("val", {})
        console.print(f"[green]saved[/] {output}: val micro-F1 {100 * val.get('f1_micro', 0):.1f}, "
                      f"macro-F1 {100 * val.get('f1_macro', 0):.1f}, mAP {100 * val.get('map', 0):.1f} "
                      f"at threshold {metrics.get('threshold', 0.5):.2f}")


def _train_seeds(ctx: typer.Context, config, data: Path, output: Path, overrides: list[str], resume, init_from,
                 seeds: str) -> None:
    """train --seeds: each seed's folder records its own single-seed command, OUTPUT this one."""
    from clem_icd.cli.record import command_line, record_command
    from clem_icd.run_record import write_command_record
    from clem_icd.training.seeds import parse_seeds, seed_folder, train_seeds

    def seed_command(seed: int) -> list[str]:
        return command_line(ctx, values={"output": seed_folder(output, seed)}, drop=("resume", "seeds"),
                            append=[f"train.seed={seed}"])

    summary = train_seeds(config, overrides, parse_seeds(seeds), data, output, resume=resume, init_from=init_from,
                          command_of=seed_command,
                          on_trained=lambda seed, folder: write_command_record(folder, seed_command(seed), seed=seed),
                          command=shlex.join(command_line(ctx, drop=("resume",))))
    if summary is None:  # not the main process
        return
    record_command(output, ctx, drop=("resume",), resumed=resume is not False)
    val = summary["metrics"].get("val") or {}
    cells = [f"{label} {100 * val[key]['mean']:.1f} ± {100 * (val[key]['sd'] or 0):.1f}"
             for key, label in (("f1_micro", "micro-F1"), ("f1_macro", "macro-F1"), ("map", "mAP"))
             if (val.get(key) or {}).get("mean") is not None]
    console.print(f"[green]saved[/] {output}/seeds.json, seeds.md ({len(summary['seeds'])} seeds): val "
                  + ", ".join(cells))


def tokenize(
    config: str = typer.Option(None, "--config", "-c", help="Recipe whose model section names the tokenizer "
                               "(model.encoder / model.tokenizer) and model.max_length."),
    data: Path = typer.Option(..., "--data", help="Prepared dataset folder (clem-icd prepare ...)."),
    overrides: list[str] = typer.Argument(None, metavar="[SECTION.KEY=VALUE]...", help="Override recipe keys, "
                                          "e.g. model.max_length=4096."),
    splits: str = typer.Option("train,val,test", "--splits", help="Comma-separated splits to tokenise."),
    workers: int = typer.Option(None, "--workers", min=1, help="Tokenizer processes (default: the CPUs, at most 8)."),
) -> None:
    """Tokenise a prepared dataset into its token cache (DATA/token-cache, or $CLEM_ICD_TOKEN_CACHE)
    once, as `train` would: e.g. on a CPU node before a GPU job. A split already cached is not redone."""
    from clem_icd.data.dataset import PreparedDataset
    from clem_icd.errors import ClemError
    from clem_icd.model.coder import load_tokenizer
    from clem_icd.training.recipe import load_recipe
    from clem_icd.training.trainer import coded_splits

    recipe = load_recipe(config, overrides or [])
    if recipe.kind != "clem_icd":
        raise ClemError("tokenize: the recipe's model.kind is tfidf, which reads text, not tokens")
    wanted = [s.strip() for s in splits.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {"train", "val", "test"})
    if unknown:
        raise ClemError(f"--splits: unknown split(s) {', '.join(unknown)} (train, val, test)")
    dataset = PreparedDataset.load(data, text=False)
    settings = recipe.model
    tokenizer = load_tokenizer(settings.tokenizer or settings.encoder)
    table = Table("split", "notes", "tokens", "tokens/note", "seconds", "tokens/s", "cache")
    for split, notes in zip(wanted, coded_splits(dataset, dataset.code_list, tokenizer, settings.max_length,
                                                 wanted, workers=workers)):
        meta = notes.tokens.meta
        size = sum(p.stat().st_size for p in notes.tokens.folder.iterdir())
        table.add_row(split, f"{meta['notes']:,}", f"{meta['tokens']:,}", f"{meta['tokens'] / max(meta['notes'], 1):,.0f}",
                      f"{meta['seconds']:,.1f}", f"{meta['tokens'] / max(meta['seconds'], 1e-9):,.0f}",
                      f"{notes.tokens.folder} ({size / 1e6:,.1f} MB)")
    Console().print(table)


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
    ctx: typer.Context,
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
    fuse_with: Path = typer.Option(None, "--fuse-with", help="Also evaluate the model fused with this "
                                   "model folder (rank fusion, see clem-icd fuse) as a 'fused' column, its "
                                   "threshold tuned on the dataset's val split; writes fused_ranking.tsv."),
    fuse_weight: float = typer.Option(1.0, "--fuse-weight", help="Weight of the --fuse-with model against "
                                      "the model's 1."),
    fuse_method: str = typer.Option("rrf", "--fuse-method", help="rrf (weighted reciprocal rank fusion) or "
                                    "mean (weighted mean of the probabilities)."),
    unseen_codes: bool = typer.Option(False, "--unseen-codes", help="Rank codes without a training example "
                                      "too, by the model folder's description matcher (clem-icd match)."),
    device: str = options.DEVICE,
    precision: str = typer.Option("auto", "--precision", help="auto (the precision training scored val in, "
                                  "which the model folder records: the one its threshold was tuned in; for a "
                                  "folder without the record, bf16 where the device runs it natively, else "
                                  "fp32), fp32, bf16 or fp16."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Notes per forward pass (training's val "
                                   "batches: sorted by length within groups of 50 batches); ignored with "
                                   "--max-batch-tokens. Default: the batches training scored val in (recorded "
                                   "in the model folder), else 8."),
    max_batch_tokens: int = typer.Option(None, "--max-batch-tokens", help="Batch by a token budget instead: "
                                         "notes longest first, as many per forward pass as fit, notes x the "
                                         "longest one's tokens <= N (a longer note goes alone)."),
    bootstrap: int = typer.Option(0, "--bootstrap", min=0, metavar="N", help="Bootstrap 95% intervals over the "
                                  "split's notes from N resamples (1000 is usual), as 'ci95' in metrics.json and "
                                  "beside each value in the table; the same resamples for every column. 0: none."),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap's resamples."),
) -> None:
    """Evaluate with the protocol of Edin et al. 2023: only codes present in the split, documents
    without positives left out, metrics at the val-tuned threshold and at 0.5. By default the
    model scores notes as training scored val (precision and batches recorded in the folder), so
    `--split val` gives back the training's metrics.json['val']. Multi-GPU: `accelerate launch -m
    clem_icd.cli evaluate ...` splits the notes across the processes (docs/distributed.md)."""
    from clem_icd.errors import ClemError
    from clem_icd.evaluation.evaluate import evaluate as run_evaluation
    from clem_icd.evaluation.scoring import ScoringOptions
    from clem_icd.training.recipe import load_recipe

    if fuse_with is not None and fuse_method not in ("rrf", "mean"):
        raise ClemError(f"--fuse-method must be rrf or mean, got '{fuse_method}'")
    if fuse_with is not None and not 0 <= fuse_weight < float("inf"):
        raise ClemError(f"--fuse-weight must be a finite number of at least 0, got {fuse_weight}")
    scoring = ScoringOptions(device=device, precision=precision, batch_size=batch_size,
                             max_batch_tokens=max_batch_tokens)  # checked before any model loads
    recipe = load_recipe(baseline_recipe)
    if recipe.kind != "tfidf":
        raise ClemError(f"--baseline-recipe {baseline_recipe}: model.kind is {recipe.kind}, not tfidf")
    results = run_evaluation(model, data, split, out, baseline=baseline, baseline_options=recipe.model,
                             fuse_with=fuse_with, fuse_weight=fuse_weight, fuse_method=fuse_method,
                             unseen_codes=unseen_codes, scoring=scoring, bootstrap=bootstrap,
                             bootstrap_seed=bootstrap_seed, console=Console())
    if results:  # the main process (under accelerate launch the others return none)
        from clem_icd.cli.record import record_command

        record_command(out, ctx)
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
