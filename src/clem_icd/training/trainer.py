"""Training on one GPU or many with Hugging Face Accelerate (`accelerate launch` gives DDP, FSDP
or DeepSpeed with no code of ours), and on CPU.

AdamW with linear warm-up and decay, gradient accumulation to a global batch size, gradient
clipping, bf16/fp16 autocast where the hardware has it, optional gradient checkpointing,
length-grouped batches, evaluation on val every epoch, early stopping on val mAP, the decision
threshold tuned on val at the end (argmax of micro-F1), the best model saved, per-epoch metrics
as JSON lines.
"""

from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from clem_icd.atomic import write_json_atomic
from clem_icd.data.dataset import PreparedDataset
from clem_icd.errors import ClemError
from clem_icd.evaluation.metrics import compute_metrics, tune_threshold
from clem_icd.precision import mixed_precision
from clem_icd.progress import progress_bar
from clem_icd.training.data import CodedNotes, LengthGroupedBatches, collate
from clem_icd.training.recipe import Recipe


def train(recipe: Recipe, data_dir: Path, output_dir: Path) -> dict:
    """Train and save the best model to `output_dir`; returns its final metrics."""
    dataset = PreparedDataset.load(data_dir)
    output_dir = Path(output_dir)
    train_docs, val_docs = dataset.split("train"), dataset.split("val")
    if train_docs.is_empty():
        raise ClemError(f"{data_dir}: no documents in the train split")
    if val_docs.is_empty():
        raise ClemError(f"{data_dir}: no documents in the val split (needed for early stopping and the threshold)")
    if recipe.kind == "tfidf":
        return train_tfidf(recipe, dataset, output_dir)
    return train_coder(recipe, dataset, output_dir)


def train_tfidf(recipe: Recipe, dataset: PreparedDataset, output_dir: Path) -> dict:
    from clem_icd.baselines.fit import fit_tfidf_baseline

    # The one fit-tune-save path of the baseline (also used by `clem-icd evaluate`).
    _, metrics = fit_tfidf_baseline(dataset, recipe.model, output_dir)
    return metrics


def train_coder(recipe: Recipe, dataset: PreparedDataset, output_dir: Path) -> dict:
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import get_linear_schedule_with_warmup

    from clem_icd.model import ICDCoder, ICDCoderConfig

    data, optim, loop = recipe.data, recipe.optim, recipe.train
    processes = PartialState().num_processes  # the state Accelerator will share
    per_step = data.micro_batch_size * processes
    if data.batch_size % per_step:
        raise ClemError(f"data.batch_size {data.batch_size} is not a multiple of data.micro_batch_size x "
                        f"processes ({data.micro_batch_size} x {processes})")
    accelerator = Accelerator(gradient_accumulation_steps=data.batch_size // per_step,
                              mixed_precision=mixed_precision(loop.mixed_precision),
                              log_with=loop.trackers or None, project_dir=str(output_dir))
    set_seed(loop.seed)
    main = accelerator.is_main_process
    codes = dataset.code_list
    # The recipe's model section as is, plus what the data decides.
    coder = ICDCoder.from_config(ICDCoderConfig(
        **recipe.model.settings(), codes=codes,
        text_cleaning="edin2023" if dataset.manifest.get("options", {}).get("clean_text") else "none",
        code_systems=dataset.codes["system"].to_list(), descriptions=dataset.codes["description"].to_list()))
    if loop.gradient_checkpointing:
        coder.encoder.gradient_checkpointing_enable()

    with accelerator.main_process_first():
        train_set = CodedNotes(dataset.split("train"), codes, coder.tokenize)
        val_set = CodedNotes(dataset.split("val"), codes, coder.tokenize)
    init_output_bias(coder, train_set)
    pad_id = coder.tokenizer.pad_token_id or 0
    batch_collate = partial(collate, pad_id=pad_id, num_labels=len(codes))
    train_sampler = LengthGroupedBatches([len(t) for t in train_set.tokens], data.micro_batch_size,
                                         loop.seed, group=data.length_grouping)
    train_loader = DataLoader(train_set, batch_sampler=train_sampler, collate_fn=batch_collate)
    val_loader = DataLoader(val_set, batch_sampler=LengthGroupedBatches(
        [len(t) for t in val_set.tokens], data.eval_batch_size, loop.seed, shuffle=False), collate_fn=batch_collate)

    head_lr = optim.head_learning_rate or optim.learning_rate
    groups = [{"params": [p for p in coder.encoder.parameters() if p.requires_grad], "lr": optim.learning_rate},
              {"params": list(coder.head.parameters()), "lr": head_lr}]
    optimizer = torch.optim.AdamW(groups, lr=optim.learning_rate, weight_decay=optim.weight_decay)
    model, optimizer, train_loader, val_loader = accelerator.prepare(coder, optimizer, train_loader, val_loader)

    # The scheduler counts optimizer steps over all processes and is stepped by hand, once per
    # real (synchronised) optimizer step, so warm-up means the same thing on 1 or 8 GPUs.
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.gradient_accumulation_steps)
    total_steps = steps_per_epoch * loop.epochs
    warmup = min(optim.warmup_steps, total_steps // 10)  # short runs: at most 10% warm-up
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if loop.trackers:
        accelerator.init_trackers("clem-icd", config={f"{section}.{k}": v for section, values in recipe.to_dict().items()
                                                      for k, v in values.items() if isinstance(v, (int, float, str, bool))})

    log_path = output_dir / "metrics.jsonl"
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        write_json_atomic(recipe.to_dict(), output_dir / "train_config.json")
    val_targets = val_set.targets()
    best_map, best_epoch, best_scores, stale, step = -1.0, -1, None, 0, 0
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for epoch in range(loop.epochs):
        train_sampler.set_epoch(epoch)
        model.train()
        started, loss_sum, loss_count = time.perf_counter(), 0.0, 0
        with progress_bar(f"epoch {epoch + 1}/{loop.epochs}", len(train_loader)) as update:
            for i, batch in enumerate(train_loader):
                with accelerator.accumulate(model):
                    logits = model(batch["input_ids"], batch["attention_mask"])
                    loss = loss_fn(logits.float(), batch["labels"])
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and optim.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
                    optimizer.step()  # the prepared optimizer skips steps while accumulating
                    if accelerator.sync_gradients:
                        scheduler.step()
                        step += 1
                    optimizer.zero_grad()
                loss_sum += loss.item()
                loss_count += 1
                if main:
                    update(i + 1)
        train_seconds = time.perf_counter() - started
        scores = predict_scores(model, val_loader, accelerator, len(val_set), len(codes))
        val = compute_metrics(scores, val_targets, 0.5)
        record = {"epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(loss_count, 1),
                  "train_seconds": round(train_seconds, 2), "val@0.5": val,
                  "learning_rate": scheduler.get_last_lr()[0]}
        if loop.trackers:
            accelerator.log({"train_loss": record["train_loss"], **{f"val/{k}": v for k, v in val.items()}}, step=step)
        improved = val["map"] > best_map
        if improved:
            best_map, best_epoch, best_scores, stale = val["map"], epoch + 1, scores, 0
            accelerator.wait_for_everyone()
            if main:
                accelerator.unwrap_model(model).save_pretrained(output_dir / "best")
        else:
            stale += 1
        if main:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if stale >= loop.early_stopping_patience:
            break

    accelerator.wait_for_everyone()
    metrics: dict = {}
    if main:
        best = ICDCoder.from_pretrained(output_dir / "best")
        best.config.threshold = tune_threshold(best_scores, val_targets)
        metrics = {"best_epoch": best_epoch, "threshold": best.config.threshold,
                   "val": compute_metrics(best_scores, val_targets, best.config.threshold),
                   "val@0.5": compute_metrics(best_scores, val_targets, 0.5)}
        _publish_best(best, output_dir, metrics)
    accelerator.end_training()
    # Accelerate keeps its state (mixed precision, ...) per process; reset it so that another
    # training in the same process (a notebook, the demo, tests) may choose differently.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    return metrics


@torch.no_grad()
def init_output_bias(coder, train_set: CodedNotes) -> None:
    """Start each code's output bias at the log-odds of its (smoothed) training prevalence, so
    the first epoch is not spent learning that nearly every code is rare (Lin et al. 2017's prior
    initialisation); with thousands of codes this is most of what an epoch would otherwise do."""
    counts = np.zeros(len(coder.codes))
    for labels in train_set.labels:
        counts[labels] += 1
    prevalence = (counts + 0.1) / (len(train_set) + 0.2)
    coder.head.output_bias.copy_(torch.from_numpy(np.log(prevalence / (1 - prevalence))).float())


@torch.no_grad()
def predict_scores(model, loader, accelerator, n_documents: int, n_codes: int) -> np.ndarray:
    """Probabilities (documents, codes) in dataset order, gathered from all processes."""
    model.eval()
    scores = np.zeros((n_documents, n_codes), dtype=np.float32)
    for batch in loader:
        logits = model(batch["input_ids"], batch["attention_mask"])
        index, probabilities = accelerator.gather_for_metrics((batch["index"], torch.sigmoid(logits.float())))
        scores[index.cpu().numpy()] = probabilities.cpu().numpy()
    return scores


def _publish_best(best, output_dir: Path, metrics: dict) -> None:
    """The best model becomes the output folder's model files (config with the tuned
    threshold, weights, tokenizer, metrics, card); the training log stays beside them."""
    import shutil

    staging = output_dir / "model.tmp"
    best.save_pretrained(staging, metrics=metrics)
    for item in staging.iterdir():
        item.replace(output_dir / item.name)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(output_dir / "best", ignore_errors=True)
