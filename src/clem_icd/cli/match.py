"""`clem-icd match`: give a trained model a description matcher, so that it can rank codes that
no training note had (the whole code system, or a new release's codes)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from clem_icd.cli import options

console = Console(stderr=True, soft_wrap=True)


def _counter(update):
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        update(done)

    return step


def match(
    model: Path = typer.Option(..., "--model", "-m", help="Trained model folder; the matcher is written "
                               "into it (MODEL/matcher), replacing an older one."),
    data: Path = typer.Option(..., "--data", help="The prepared dataset the model was trained on: its train "
                              "split says which codes have a training example, and calibrates the matcher "
                              "(the similarity of a correct unseen code, leave-one-note-out)."),
    systems: str = typer.Option("icd10cm,icd10pcs", "--systems", help="Code systems of the label space, "
                                "comma-separated: every ICD-10-CM code (7th characters folded into the "
                                "code without it) and every ICD-10-PCS code and 4-character prefix, from the "
                                "installed simple-icd-10-cm and drg packages."),
    encoder: str = typer.Option(None, "--encoder", help="Sentence encoder (hub id, folder or "
                                "package://module/folder). Default: the model's pretrained encoder (its "
                                "recipe's model.encoder), e.g. all-MiniLM-L6-v2 for the CodiEsp recipes."),
    words: int = typer.Option(16, "--words", help="Passage length in words (notes are cut at sentences, "
                              "long sentences into half-overlapping windows of this many words)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Texts per forward pass when embedding."),
    family: bool = typer.Option(True, "--family/--no-family", help="Calibrate with the family evidence too: "
                                "the model's probability for a trained code of the same ICD-10-CM category / "
                                "ICD-10-PCS operation (scores the training notes with the model once)."),
    calibrate_only: bool = typer.Option(False, "--calibrate-only", help="Keep the model folder's matcher (its "
                                        "code space and embeddings) and only fit its calibration again."),
    device: str = options.DEVICE,
    precision: str = typer.Option("auto", "--precision", help="Of the model's scoring of the training notes "
                                  "(--family): auto (the precision its training scored val in, as the folder "
                                  "records, else bf16 where native, else fp32), fp32, bf16 or fp16. The sentence "
                                  "encoder embeds in fp32, the precision its calibration is fitted in."),
    max_batch_tokens: int = typer.Option(None, "--max-batch-tokens", help="Batch the model's scoring of the "
                                         "training notes by a token budget (notes x the longest one's tokens <= N) "
                                         "instead of the batches its training scored val in."),
) -> None:
    """Embed every code description of the code systems once, calibrate on the training notes, and
    save the matcher in the model folder. Then `predict --unseen-codes` / `evaluate --unseen-codes`
    rank codes without a training example by their calibrated description match, beside the
    model's own codes. After a new code release, run it again with the updated packages: the new
    codes are ranked without retraining. The encoders run on --device; under `accelerate launch
    -m clem_icd.cli match ...` the model's scoring of the training notes is split across the
    processes, and the main process embeds, calibrates and writes."""
    import numpy as np
    import torch

    from clem_icd.data.dataset import PreparedDataset
    from clem_icd.errors import ClemError
    from clem_icd.evaluation.scoring import Scorer, ScoringOptions
    from clem_icd.loading import MATCHER_FOLDER, load_model, model_type
    from clem_icd.matching.code_space import code_space
    from clem_icd.matching.matcher import DescriptionMatcher
    from clem_icd.matching.open_set import model_code_details
    from clem_icd.progress import progress_bar

    kind = model_type(model)
    if encoder is None:
        encoder = json.loads((model / "config.json").read_text()).get("encoder") if kind == "clem_icd" else None
        if not encoder:
            raise ClemError(f"{model}: a {kind} model has no encoder to match descriptions with: give --encoder")
    if words < 2 or batch_size < 1:
        raise ClemError("--words must be at least 2 and --batch-size at least 1")
    train = PreparedDataset.load(data).split("train")
    if train.is_empty():
        raise ClemError(f"{data}: no documents in split 'train' (the matcher is calibrated on them)")
    seen = {code for codes in train["codes"].to_list() for code in codes}
    scorer = Scorer(ScoringOptions(device=device, precision=precision, max_batch_tokens=max_batch_tokens))
    texts, labels = train["text"].to_list(), train["codes"].to_list()
    # The model first: every process scores its share of the training notes, then the others are done.
    scored = load_model(model, device=scorer.device) if family else None
    probabilities = scorer(scored, texts) if scored else None
    if not scorer.processes.is_main:
        return
    torch.manual_seed(0)
    if calibrate_only:
        matcher = DescriptionMatcher.from_pretrained(model / MATCHER_FOLDER, device=scorer.device)
        matcher.seen = np.array([code in seen for code in matcher.codes])
    else:
        space = code_space([s.strip() for s in systems.split(",") if s.strip()])
        descriptions = len({text for c in space for text in c.texts})  # not `texts`: the notes, calibrated on below
        with progress_bar(f"embedding {len(space):,} codes' descriptions", descriptions) as update:
            matcher = DescriptionMatcher.build(encoder, space, seen, words=words, batch_size=batch_size,
                                               progress=_counter(update), device=scorer.device)
    with progress_bar("calibrating on the training notes", len(train)) as update:
        fit = matcher.calibrate(texts, labels, progress=_counter(update), model_probabilities=probabilities,
                                model_codes=scored.codes if scored else None,
                                model_systems=model_code_details(scored)[0] if scored else None)
    matcher.save_pretrained(model / MATCHER_FOLDER)
    console.print(f"matcher: {len(matcher.codes):,} codes ({int(matcher.seen.sum()):,} with a training example), "
                  f"calibrated on {len(train)} notes ({fit['positives']} unseen-code positives of "
                  f"{fit['pairs']:,} candidates: slope {fit['slope']:.2f}, family slope {fit['family_slope']:.2f}, "
                  f"intercept {fit['intercept']:.2f}) "
                  f"-> {model / MATCHER_FOLDER}", markup=False, highlight=False)
