"""Training on one GPU or many with Hugging Face Accelerate (`accelerate launch` gives DDP, FSDP
or DeepSpeed with no code of ours), and on CPU.

AdamW with linear warm-up and decay, gradient accumulation to a global batch size (in notes),
gradient clipping, bf16/fp16 autocast where the hardware has it, optional gradient checkpointing,
length-grouped batches of a fixed number of notes or of as many notes as fit a token budget
(`data.max_batch_tokens`, accumulated by hand: accumulate_global_batch), evaluation on val every
epoch, early stopping on val mAP, the decision threshold tuned on val at the end (argmax of
micro-F1), the best model saved, per-epoch metrics as JSON lines, and a record every
train.log_every optimizer steps (steps.jsonl and the trackers: loss, learning rate, gradient
norm, throughput, peak memory).

Every process runs the same number of forward passes in every optimizer step and every
evaluation: under FSDP (and DeepSpeed ZeRO-3) each forward pass gathers the weights in
collectives that all processes join, so a process with fewer passes would leave the others
waiting forever. By tokens, the processes' shares are padded with stand-in notes weighted 0
(equal_micro_batches); by notes, Accelerate's sharded loader gives every process as many batches.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from clem_icd.atomic import write_json_atomic, write_text_atomic
from clem_icd.data.dataset import PreparedDataset
from clem_icd.errors import ClemError
from clem_icd.evaluation.metrics import compute_metrics, tune_threshold

# One gather of scores for training's val and evaluate (clem_icd.inference.distributed).
from clem_icd.inference.distributed import distributed_on_cpu, gather_scores
from clem_icd.precision import mixed_precision
from clem_icd.progress import progress_bar, warn
from clem_icd.training.checkpoints import (
    checked_checkpoint,
    checkpoints_dir,
    complete_checkpoints,
    discard_after,
    find_checkpoint,
    read_progress,
    remove_checkpoints,
    save_checkpoint,
)
from clem_icd.training.data import (
    CodedNotes,
    GlobalBatch,
    LengthGroupedBatches,
    TokenBudgetBatches,
    collate,
    equal_micro_batches,
)
from clem_icd.training.recipe import Recipe
from clem_icd.training.token_cache import cached_tokens


def train(recipe: Recipe, data_dir: Path, output_dir: Path, resume: bool | Path = False,
          init_from: Path | None = None) -> dict:
    """Train and save the best model to `output_dir`; returns its final metrics. `resume`: True
    continues from the newest usable checkpoint in `output_dir` (or starts afresh if it has
    none), a path from that checkpoint folder. `init_from`: a trained model folder to fine-tune
    (its codes kept, the dataset's new ones added: clem_icd.training.init_from)."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    init_from = None if init_from is None else Path(init_from)
    # The coder reads tokens from the token cache: the note texts stay on disk.
    dataset = PreparedDataset.load(data_dir, text=recipe.kind == "tfidf")
    train_docs, val_docs = dataset.split("train"), dataset.split("val")
    if train_docs.is_empty():
        raise ClemError(f"{data_dir}: no documents in the train split")
    if val_docs.is_empty():
        raise ClemError(f"{data_dir}: no documents in the val split (needed for early stopping and the threshold)")
    if recipe.kind == "tfidf":
        if resume:
            raise ClemError("--resume: the TF-IDF baseline is fitted in one go and has no checkpoints")
        if init_from is not None:
            raise ClemError("--init-from: the TF-IDF baseline is fitted in one go and cannot start from a model")
        return train_tfidf(recipe, dataset, output_dir)
    if init_from is not None:
        from clem_icd.training.init_from import check_init_from

        check_init_from(init_from, recipe.model, dataset)  # before any tokenising or resuming
    checkpoint = resume_from(recipe, output_dir, resume, dataset, init_from)
    return train_coder(recipe, dataset, output_dir, checkpoint, init_from=init_from)


TRAIN_INPUTS = "train_inputs.json"  # beside train_config.json: the dataset and --init-from model of the run


def resume_from(recipe: Recipe, output_dir: Path, resume: bool | Path, dataset: PreparedDataset | None = None,
                init_from: Path | None = None) -> Path | None:
    """The checkpoint to resume from, after checking that it belongs to this recipe, dataset and
    --init-from model; refuses to start afresh over an interrupted run's checkpoints (that would
    throw them away).

    The one recipe key that may change is train.epochs, to no fewer than the epochs the
    checkpoint has reached (train_config.json is then rewritten with it). From the resumed step
    on, the learning rate is the schedule of a run started with the new train.epochs: the
    scheduler is built for the new total of steps and load_state restores its step count, so a
    linear decay continues towards 0 at the new end (in a finished or nearly finished epoch
    budget that is a jump back up). Early stopping's state is restored with the rest: a run it
    has ended stays ended."""
    if resume is False or resume is None:
        if complete_checkpoints(output_dir):
            raise ClemError(f"{output_dir} has checkpoints of an unfinished training: pass --resume to "
                            "continue it, or choose another --output")
        return None
    from accelerate import PartialState

    main = PartialState().is_main_process
    report = warn if main else (lambda message: None)  # once, not per process
    saved_path = output_dir / "train_config.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else {}
    current = recipe.to_dict()
    if resume is True and not complete_checkpoints(output_dir):
        finished = (output_dir / "metrics.json").is_file() and saved
        if finished and _differing_keys(saved, current) == ["train.epochs"]:
            raise ClemError(f"--resume: {output_dir} has finished its training and its checkpoints were removed, "
                            "so train.epochs cannot be raised there; to train it further, fine-tune it: "
                            f"clem-icd train --init-from {output_dir} --output OTHER ...")
        # The same command starts a job and restarts it after a pre-emption (docs/distributed.md).
        report(f"--resume: no checkpoint in {checkpoints_dir(output_dir)}; starting from the beginning")
        return None
    differing = [key for key in _differing_keys(saved, current) if key != "train.epochs"]
    if differing or "train" not in saved:
        raise ClemError(f"--resume: the recipe differs from the one of {output_dir} in "
                        f"{', '.join(differing or _differing_keys(saved, current))}; resume with the same recipe "
                        "(train.epochs may change)")
    if dataset is not None:
        from clem_icd.training.init_from import input_changes, training_inputs

        inputs_path = output_dir / TRAIN_INPUTS
        if inputs_path.is_file():  # runs started before it was written cannot be checked
            refused = input_changes(json.loads(inputs_path.read_text()), training_inputs(dataset, init_from),
                                    Path(dataset.path))
            if refused:
                raise ClemError(refused)
    folder = find_checkpoint(output_dir, report) if resume is True else checked_checkpoint(resume)
    if folder is None:
        report(f"--resume: no usable checkpoint in {checkpoints_dir(output_dir)}; starting from the beginning")
        return None
    epochs, saved_epochs = recipe.train.epochs, saved["train"].get("epochs")
    if epochs != saved_epochs:
        progress = read_progress(folder)
        reached = progress["epoch"] + (1 if progress["epoch_steps"] else 0)  # a started epoch counts
        if epochs < reached:
            raise ClemError(f"--resume: train.epochs {epochs} is below the {reached} epoch(s) that checkpoint "
                            f"{folder.name} has reached; use at least {reached}")
        if progress.get("stopped"):
            report(f"--resume: early stopping ended this run after epoch {progress['epoch']}; "
                   f"train.epochs {saved_epochs} → {epochs} does not continue it")
        if main:
            write_json_atomic(current, saved_path)
    return folder


def _differing_keys(saved: dict, current: dict) -> list[str]:
    """section.key of every recipe value that differs (a missing saved recipe differs in all)."""
    return sorted(f"{section}.{key}" for section in set(saved) | set(current)
                  for key in set(saved.get(section, {})) | set(current.get(section, {}))
                  if saved.get(section, {}).get(key, ...) != current.get(section, {}).get(key, ...))


def train_tfidf(recipe: Recipe, dataset: PreparedDataset, output_dir: Path) -> dict:
    from clem_icd.baselines.fit import fit_tfidf_baseline

    # The one fit-tune-save path of the baseline (also used by `clem-icd evaluate`).
    _, metrics = fit_tfidf_baseline(dataset, recipe.model, output_dir)
    return metrics


def coded_splits(dataset: PreparedDataset, codes: list[str], tokenizer, max_length: int,
                 splits=("train", "val"), workers: int | None = None, wait: bool = False) -> list[CodedNotes]:
    """The splits' notes with their tokens from the token cache (tokenised first if needed;
    `wait`: for another process to do it)."""
    coded = []
    for split in splits:
        documents = dataset.split(split)
        tokens = cached_tokens(dataset.path, split, tokenizer, max_length, documents["id"].to_list(),
                               dataset_sha256=dataset.documents_sha256, workers=workers, wait=wait)
        coded.append(CodedNotes(documents, codes, tokens))
    return coded


def tokenise_before_processes_join(dataset: PreparedDataset, settings, init_from: Path | None = None) -> None:
    """Fill the token cache before the processes form a group: tokenising MIMIC-IV can take
    longer than a collective waits (NCCL's default timeout is 10 minutes), so the other
    processes must not wait in a barrier. The first process of each node tokenises, the node's
    others poll for the files. On a file system the nodes share, their first processes race to
    the same result, which is harmless: the first to finish publishes, the others discard.
    `init_from`: the tokenizer saved in that model folder (which may be offline from its hub id)."""
    from clem_icd.model.coder import load_tokenizer
    from clem_icd.training.init_from import saved_tokenizer

    tokenizer = saved_tokenizer(init_from) if init_from else load_tokenizer(settings.tokenizer or settings.encoder)
    coded_splits(dataset, dataset.code_list, tokenizer, settings.max_length,
                 wait=int(os.environ.get("LOCAL_RANK", "0")) != 0)


def learning_rate_schedule(optimizer, optim, total_steps: int, report: Callable[[str], None] | None = None):
    """The recipe's schedule (optim.schedule) over `total_steps` optimizer steps, after a linear
    warm-up of optim.warmup_steps, capped at 10% of the steps for short runs (and said to
    `report`: a recipe tuned on a larger corpus would otherwise warm up for less than it says)."""
    from transformers import get_scheduler

    warmup = min(optim.warmup_steps, total_steps // 10)
    if warmup < optim.warmup_steps and report is not None:
        report(f"optim.warmup_steps {optim.warmup_steps} is capped at 10% of the {total_steps} optimizer steps: "
               f"{warmup} steps of warm-up (optim.warmup_steps={warmup} says so without this warning)")
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[optim.schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def train_coder(recipe: Recipe, dataset: PreparedDataset, output_dir: Path, checkpoint: Path | None = None, *,
                init_from: Path | None = None) -> dict:
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed

    from clem_icd.model import ICDCoder
    from clem_icd.training.init_from import starting_coder, training_inputs

    data, optim, loop = recipe.data, recipe.optim, recipe.train
    by_tokens = data.max_batch_tokens is not None
    tokenise_before_processes_join(dataset, recipe.model, init_from)
    cpu = distributed_on_cpu()
    state = PartialState(cpu=cpu)  # the state Accelerator will share
    report = warn if state.is_main_process else (lambda message: None)  # once, not per process
    # By tokens, micro-batches are accumulated by hand (accumulate_global_batch), not by Accelerate.
    micro, accumulation = (None, 1) if by_tokens else _micro_batching(data, state.num_processes, report)
    accelerator = Accelerator(cpu=cpu, gradient_accumulation_steps=accumulation,
                              mixed_precision=mixed_precision(loop.mixed_precision),
                              log_with=loop.trackers or None, project_dir=str(output_dir))
    if by_tokens:
        _check_token_batching_backend(accelerator)
    set_seed(loop.seed)
    main = accelerator.is_main_process
    # New, or the --init-from model extended to the dataset's codes (its own first).
    coder, fresh_codes = starting_coder(recipe.model, dataset, init_from)
    codes = coder.codes
    if loop.gradient_checkpointing:
        # transformers 5 renamed it (the old name warns until v6); both set the layers' flag that
        # clem_icd.longcontext honours too.
        enable = getattr(coder.encoder, "activation_checkpointing_enable", None) or coder.encoder.gradient_checkpointing_enable
        enable()

    # From the token cache, filled before the processes joined: every process maps the same files.
    train_set, val_set = coded_splits(dataset, codes, coder.tokenizer, coder.config.max_length)
    init_output_bias(coder, train_set, fresh_codes)
    pad_id = coder.tokenizer.pad_token_id or 0
    batch_collate = partial(collate, pad_id=pad_id, num_labels=len(codes))
    train_sampler, train_loader = _train_batches(data, train_set, loop.seed, accelerator, batch_collate, micro)
    val_loader, val_micro_batches = _val_batches(data, val_set, loop.seed, accelerator, batch_collate)

    head_lr = optim.head_learning_rate or optim.learning_rate
    groups = [{"params": [p for p in coder.encoder.parameters() if p.requires_grad], "lr": optim.learning_rate},
              {"params": list(coder.head.parameters()), "lr": head_lr}]
    optimizer = torch.optim.AdamW(groups, lr=optim.learning_rate, weight_decay=optim.weight_decay)
    model, optimizer, train_loader, val_loader = _prepare(accelerator, coder, optimizer, train_loader, val_loader)

    # The scheduler counts optimizer steps over all processes and is stepped by hand, once per
    # real (synchronised) optimizer step, so warm-up means the same thing on 1 or 8 GPUs.
    if by_tokens:
        steps_per_epoch = len(train_sampler)  # ceil(notes / batch_size): global batches are in notes
    else:
        steps_per_epoch = math.ceil(len(train_loader) / accelerator.gradient_accumulation_steps)
    total_steps = steps_per_epoch * loop.epochs
    scheduler = learning_rate_schedule(optimizer, optim, total_steps, report)
    # Not prepared (Accelerate would step it once per process): registered, so that save_state
    # and load_state carry it with the model, optimizer and RNG states.
    accelerator.register_for_checkpointing(scheduler)
    if loop.trackers:
        accelerator.init_trackers("clem-icd", config={f"{section}.{k}": v for section, values in recipe.to_dict().items()
                                                      for k, v in values.items() if isinstance(v, (int, float, str, bool))})

    def batch_of(dataset_split: CodedNotes, indices: list[int]) -> dict:
        """A micro-batch collated and on this process's device (loaders Accelerate did not prepare)."""
        return {k: v.to(accelerator.device) for k, v in batch_collate([dataset_split[i] for i in indices]).items()}

    def evaluate() -> np.ndarray:
        if val_loader is not None:
            return predict_scores(model, val_loader, accelerator, len(val_set), len(codes))
        batches = ((batch_of(val_set, m.indices), m.counted) for m in val_micro_batches)  # collated one at a time
        return predict_scores_by_tokens(model, batches, accelerator, len(val_set), len(codes))

    log_path, steps_path = output_dir / "metrics.jsonl", output_dir / STEPS_LOG
    progress = TrainProgress()
    best_scores = None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        progress = TrainProgress(**read_progress(checkpoint))
        if progress.best_epoch > 0:
            scores_path = _best_folder(output_dir, progress.best_epoch) / VAL_SCORES
            if not scores_path.is_file():
                raise ClemError(f"--resume: {scores_path} is missing (the best model so far, which {checkpoint} "
                                "needs); start afresh in another --output")
            best_scores = np.load(scores_path, allow_pickle=False)
        if main:
            _keep_log_until(log_path, progress.epoch)
            _keep_log_until(steps_path, progress.step, key="step")
            discard_after(output_dir, checkpoint)
            _remove_unreferenced_best(output_dir, progress.best_epoch)
    elif main:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_checkpoints(output_dir)  # only damaged ones can be left here (resume_from)
        _remove_unreferenced_best(output_dir, None)
        log_path.write_text("")
        steps_path.write_text("")
        write_json_atomic(recipe.to_dict(), output_dir / "train_config.json")
        write_json_atomic(training_inputs(dataset, init_from), output_dir / TRAIN_INPUTS)

    def save_checkpoint_now() -> None:
        save_checkpoint(accelerator, output_dir, asdict(progress), loop.keep_checkpoints)
        if main:
            _remove_unreferenced_best(output_dir, progress.best_epoch)

    val_targets = val_set.targets()
    for epoch in range(progress.epoch, loop.epochs):
        if progress.stopped:
            break
        train_sampler.set_epoch(epoch)
        resumed = progress.epoch_steps  # optimizer steps of this epoch done before a resume
        if not by_tokens:
            # Accelerate's loader sets its batch sampler's epoch from its own count of
            # iterations, which restarts at 0 in a resumed run: set it here.
            train_loader.set_epoch(epoch)
            # Skip what a resumed epoch already did: whole optimizer steps of every process.
            train_sampler.skip = resumed * accelerator.gradient_accumulation_steps * accelerator.num_processes
        resumed_micro = resumed * accelerator.gradient_accumulation_steps  # this process's
        model.train()
        started = time.perf_counter() - progress.train_seconds
        window_started = time.perf_counter() - progress.window_seconds  # of the steps since the last record
        bar_length = steps_per_epoch if by_tokens else len(train_loader) + resumed_micro
        with progress_bar(f"epoch {epoch + 1}/{loop.epochs}", bar_length, status=True) as update:
            if by_tokens:
                steps = _steps_by_tokens(model, optimizer, scheduler, train_sampler.steps()[resumed:],
                                         partial(batch_of, train_set), train_set.lengths, accelerator,
                                         optim.max_grad_norm)
            else:
                steps = _steps_by_notes(model, optimizer, scheduler, train_loader, accelerator, optim.max_grad_norm)
            step = None
            for step in steps:
                # Over all processes (one small all-reduce per step), so that every loss logged
                # has one definition: the mean per-note loss over all notes of its steps.
                loss_sum, notes, tokens = _summed(accelerator, step.loss_sum, step.notes, step.tokens)
                progress.add_step(loss_sum, int(notes), int(tokens))
                if progress.step % loop.log_every == 0:
                    _log_steps(accelerator, progress, step, epoch, time.perf_counter() - window_started, steps_path,
                               loop.trackers)
                    window_started = time.perf_counter()
                if main:
                    elapsed = time.perf_counter() - started
                    update(progress.epoch_steps if by_tokens else resumed_micro + step.done,
                           f"loss {progress.loss_sum / max(progress.loss_count, 1):.4f}  "
                           f"{progress.loss_count / max(elapsed, 1e-9):.1f} notes/s")
                if (loop.checkpoint_every and progress.step % loop.checkpoint_every == 0
                        and progress.epoch_steps < steps_per_epoch):  # the epoch's end has its own
                    progress.train_seconds = time.perf_counter() - started
                    progress.window_seconds = time.perf_counter() - window_started
                    save_checkpoint_now()
            if progress.window_notes and step is not None:  # the epoch's last steps, not yet logged
                _log_steps(accelerator, progress, step, epoch, time.perf_counter() - window_started, steps_path,
                           loop.trackers)
        train_seconds = time.perf_counter() - started
        scores = evaluate()
        val = compute_metrics(scores, val_targets, 0.5)
        record = {"epoch": epoch + 1, "step": progress.step,
                  "train_loss": progress.loss_sum / max(progress.loss_count, 1),
                  "train_seconds": round(train_seconds, 2), "val@0.5": val,
                  "learning_rate": scheduler.get_last_lr()[0]}
        if loop.trackers:
            accelerator.log({"train_loss": record["train_loss"], **{f"val/{k}": v for k, v in val.items()}},
                            step=progress.step)
        if val["map"] > progress.best_map:
            progress.best_map, progress.best_epoch, progress.stale, best_scores = val["map"], epoch + 1, 0, scores
            accelerator.wait_for_everyone()
            _save_best(accelerator, model, scores, output_dir, epoch + 1)
        else:
            progress.stale += 1
        if main:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        progress.next_epoch(stopped=progress.stale >= loop.early_stopping_patience)
        save_checkpoint_now()

    accelerator.wait_for_everyone()
    metrics: dict = {}
    if main:
        best = ICDCoder.from_pretrained(_best_folder(output_dir, progress.best_epoch))
        best.config.threshold = tune_threshold(best_scores, val_targets)
        # How val was scored, the scores the threshold is tuned on: `clem-icd evaluate` scores so
        # by default (the same precision and batches give the same rounding, so the same metrics).
        best.config.scored_precision = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}.get(accelerator.mixed_precision)
        best.config.scored_batch_size = None if data.eval_budget is not None else data.eval_batch_size
        best.config.scored_max_batch_tokens = data.eval_budget
        metrics = {"best_epoch": progress.best_epoch, "threshold": best.config.threshold,
                   "val": compute_metrics(best_scores, val_targets, best.config.threshold),
                   "val@0.5": compute_metrics(best_scores, val_targets, 0.5)}
        _publish_best(best, output_dir, metrics)
        remove_checkpoints(output_dir)
        _remove_unreferenced_best(output_dir, None)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    # Accelerate keeps its state (mixed precision, gradient accumulation, ...) per process; reset
    # it so that another training in the same process (a notebook, the demo, tests) may choose
    # differently.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    return metrics


@dataclass
class TrainProgress:
    """Where training is, saved in every checkpoint (progress.json)."""

    epoch: int = 0  # the epoch in progress, from 0
    epoch_steps: int = 0  # optimizer steps done in it
    step: int = 0  # optimizer steps done in all
    # The epoch's summed per-note training loss so far and its notes, over all processes (for
    # its log line).
    loss_sum: float = 0.0
    loss_count: int = 0
    train_seconds: float = 0.0  # the epoch's training time so far
    best_map: float = -1.0
    best_epoch: int = 0  # 0: none yet
    stale: int = 0  # epochs since the best
    stopped: bool = False  # early stopping has ended training
    # The steps since the last step record (steps.jsonl), over all processes: summed per-note
    # loss, notes, real tokens, seconds. Saved so that a resumed run writes the record an
    # uninterrupted run writes.
    window_loss_sum: float = 0.0
    window_notes: int = 0
    window_tokens: int = 0
    window_seconds: float = 0.0

    def add_step(self, loss_sum: float, notes: int, tokens: int) -> None:
        self.step += 1
        self.epoch_steps += 1
        self.loss_sum += loss_sum
        self.loss_count += notes
        self.window_loss_sum += loss_sum
        self.window_notes += notes
        self.window_tokens += tokens

    def next_window(self) -> None:
        self.window_loss_sum, self.window_notes, self.window_tokens, self.window_seconds = 0.0, 0, 0, 0.0

    def next_epoch(self, stopped: bool) -> None:
        self.epoch += 1
        self.epoch_steps = 0
        self.loss_sum, self.loss_count, self.train_seconds = 0.0, 0, 0.0
        self.stopped = stopped


VAL_SCORES = "val_scores.npy"
STEPS_LOG = "steps.jsonl"


@dataclass
class StepResult:
    """One optimizer step as one process saw it."""

    loss_sum: float  # the summed per-note loss of this process's (counted) notes
    notes: int
    tokens: int  # their tokens, padding left out
    grad_norm: float | None  # of the whole gradient before clipping, the same on every process
    learning_rate: float  # the step's (the encoder's parameter group)
    done: int  # micro-batches (by notes) or global batches (by tokens) of the epoch done


def _summed(accelerator, *values: float) -> list[float]:
    """`values` summed over all processes (float64: exact for counts of notes and tokens)."""
    if accelerator.num_processes == 1:
        return list(values)
    return accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum").tolist()


def _grad_norm(norm) -> float | None:
    """clip_grad_norm_'s return value as a number; None where it is unknown (DeepSpeed before its
    first step) or not finite (an fp16 step that overflowed, which the scaler skips)."""
    if norm is None:
        return None
    value = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    return value if math.isfinite(value) else None


def peak_memory_bytes(device: torch.device) -> int:
    """The process's peak memory so far: on CUDA, what PyTorch allocated on its GPU; elsewhere
    the process's peak resident set (weights, activations and all)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        import resource
    except ImportError:  # Windows: its current working set, which psutil knows
        import psutil

        return psutil.Process().memory_info().peak_wset
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _log_steps(accelerator, progress: TrainProgress, last: StepResult, epoch: int, seconds: float,
               steps_path: Path, trackers: list[str]) -> None:
    """The record of the steps since the last one, then a new window. Called on every process (the
    memory peaks are gathered, a collective); the main process writes steps.jsonl and the
    trackers get it too."""
    peak = peak_memory_bytes(accelerator.device)
    if accelerator.num_processes > 1:
        peak = int(accelerator.gather(torch.tensor([peak], dtype=torch.int64, device=accelerator.device)).max())
    seconds = max(seconds, 1e-9)
    record = {"step": progress.step, "epoch": epoch + 1, "loss": progress.window_loss_sum / max(progress.window_notes, 1),
              "learning_rate": last.learning_rate, "grad_norm": last.grad_norm,
              "notes": progress.window_notes, "tokens": progress.window_tokens,
              "notes_per_second": round(progress.window_notes / seconds, 3),
              "tokens_per_second": round(progress.window_tokens / seconds, 1),
              "peak_memory_gib": round(peak / 2**30, 4), "seconds": round(seconds, 3),
              "processes": accelerator.num_processes}
    progress.next_window()
    if not accelerator.is_main_process:
        return
    with open(steps_path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    if trackers:
        accelerator.log({f"train/{key}": value for key, value in record.items()
                         if key not in ("step", "epoch") and value is not None}, step=progress.step)


def _best_folder(output_dir: Path, epoch: int) -> Path:
    return output_dir / f"best-epoch-{epoch:03d}"


def _save_best(accelerator, model, scores: np.ndarray, output_dir: Path, epoch: int) -> None:
    """The best model so far, with its val scores (the threshold is tuned on them at the end),
    in a folder per epoch: a checkpoint from before this epoch still needs the earlier best.
    Called on every process: under FSDP gathering the full weights is a collective (each process
    holds shards; the main process receives the whole model); the main process writes."""
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    folder = _best_folder(output_dir, epoch)
    staging = output_dir / f".{folder.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    accelerator.unwrap_model(model).save_pretrained(staging, state_dict=state_dict)
    np.save(staging / VAL_SCORES, scores, allow_pickle=False)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)


def _remove_unreferenced_best(output_dir: Path, current: int | None) -> None:
    """Best-model folders that neither the current state nor a kept checkpoint refers to."""
    wanted = {current} | {read_progress(c)["best_epoch"] for c in complete_checkpoints(output_dir)
                          if (c / "progress.json").is_file()}
    for folder in output_dir.glob("best-epoch-*"):
        if int(folder.name.rsplit("-", 1)[1]) not in wanted:
            shutil.rmtree(folder, ignore_errors=True)


def _keep_log_until(log_path: Path, limit: int, key: str = "epoch") -> None:
    """A log as it was at the checkpoint (the per-epoch one by epoch, steps.jsonl by step): lines
    after it were written by the run that crashed, and the resumed run writes them again."""
    lines = log_path.read_text().splitlines() if log_path.is_file() else []
    kept = [line for line in lines if line.strip() and json.loads(line)[key] <= limit]
    write_text_atomic("".join(line + "\n" for line in kept), log_path)


def _train_batches(data, train_set: CodedNotes, seed: int, accelerator, batch_collate, micro: int | None):
    """(sampler, loader). By tokens: TokenBudgetBatches and no loader, since a loader that
    Accelerate prepares would be sharded again, and each process already takes its own share.
    Else: LengthGroupedBatches of `micro` notes (_micro_batching) and its DataLoader, which
    Accelerate shards so that every process gets as many batches (even_batches)."""
    from torch.utils.data import DataLoader

    lengths = train_set.lengths
    if data.max_batch_tokens is not None:
        return TokenBudgetBatches(lengths, data.batch_size, data.max_batch_tokens, seed, accelerator.process_index,
                                  accelerator.num_processes, group=data.length_grouping), None
    sampler = LengthGroupedBatches(lengths, micro, seed, group=data.length_grouping)
    return sampler, DataLoader(train_set, batch_sampler=sampler, collate_fn=batch_collate, generator=_loader_rng(seed))


def _val_batches(data, val_set: CodedNotes, seed: int, accelerator, batch_collate):
    """(loader, None) of eval_batch_size notes per batch (Accelerate's sharded loader: as many
    batches on every process, a few notes repeated to even them out, which gather_for_metrics
    drops), or by tokens (None, this process's micro-batches of its share of val, with stand-ins
    up to the busiest process's count)."""
    from torch.utils.data import DataLoader

    lengths = val_set.lengths
    if data.eval_budget is not None:
        return None, equal_micro_batches(list(range(len(val_set))), lengths, data.eval_budget,
                                         accelerator.process_index, accelerator.num_processes)
    sampler = LengthGroupedBatches(lengths, data.eval_batch_size, seed, shuffle=False)
    return DataLoader(val_set, batch_sampler=sampler, collate_fn=batch_collate, generator=_loader_rng(seed)), None


def _loader_rng(seed: int) -> torch.Generator:
    """A DataLoader draws a seed for its workers each time it is iterated, from the global RNG
    unless it has a generator of its own; that draw would shift the dropout masks of a run
    resumed mid-epoch (which iterates once more) against an uninterrupted one."""
    return torch.Generator().manual_seed(seed)


def _prepare(accelerator, model, optimizer, *loaders):
    """accelerator.prepare in one call (DeepSpeed reads the batch size off the loaders); a loader
    that is None (batched by tokens, each process its own share) stays None."""
    model, optimizer, *prepared = accelerator.prepare(model, optimizer, *[x for x in loaders if x is not None])
    remaining = iter(prepared)
    return model, optimizer, *[None if loader is None else next(remaining) for loader in loaders]


def _micro_batching(data, processes: int, report: Callable[[str], None]) -> tuple[int, int]:
    """By notes: (notes per forward pass, passes accumulated per optimizer step) with
    data.batch_size = notes x processes x passes. data.micro_batch_size is the most a device
    takes (memory); on more processes than it divides, the largest divisor below it is taken
    and reported, so that a recipe written for one process launches as is on several."""
    if data.batch_size % processes:
        fewer = data.batch_size // processes * processes
        raise ClemError(f"data.batch_size {data.batch_size} (notes per optimizer step over all processes) is not a "
                        f"multiple of the {processes} processes: give data.batch_size={fewer or processes}, or batch "
                        "by tokens (data.max_batch_tokens)")
    per_process = data.batch_size // processes
    micro = max(m for m in range(1, min(data.micro_batch_size, per_process) + 1) if per_process % m == 0)
    if micro != data.micro_batch_size:
        report(f"data.micro_batch_size {data.micro_batch_size} taken as {micro} on {processes} processes: "
               f"data.batch_size {data.batch_size} = {micro} notes x {processes} processes x {per_process // micro} "
               f"accumulated (give data.micro_batch_size={micro} to say so)")
    return micro, per_process // micro


def _check_token_batching_backend(accelerator) -> None:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ClemError("data.max_batch_tokens does not work under DeepSpeed, which accumulates gradients "
                        "itself over a fixed number of micro-batches: use data.micro_batch_size, or DDP / FSDP")


def _clip(accelerator, model, max_grad_norm: float) -> float | None:
    """Clip at max_grad_norm (0: not at all, but the norm is still measured) and return the norm
    before clipping."""
    return _grad_norm(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf))


def _steps_by_notes(model, optimizer, scheduler, loader, accelerator, max_grad_norm: float):
    """Micro-batches of a fixed number of notes, accumulated by Accelerate. Yields a StepResult
    after each optimizer step."""
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loss_sum, notes, tokens = 0.0, 0, 0
    for i, batch in enumerate(loader):
        with accelerator.accumulate(model):
            logits = model(batch["input_ids"], batch["attention_mask"])
            loss = loss_fn(logits.float(), batch["labels"])
            accelerator.backward(loss)
            norm = _clip(accelerator, model, max_grad_norm) if accelerator.sync_gradients else None
            learning_rate = scheduler.get_last_lr()[0]
            optimizer.step()  # the prepared optimizer skips steps while accumulating
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad()
        # The loss averages over notes and codes alike: times the notes, the summed per-note loss
        # (note_losses), the one definition of both batching paths.
        loss_sum += loss.item() * len(batch["labels"])
        notes += len(batch["labels"])
        tokens += int(batch["attention_mask"].sum())
        if accelerator.sync_gradients:
            yield StepResult(loss_sum, notes, tokens, norm, learning_rate, i + 1)
            loss_sum, notes, tokens = 0.0, 0, 0


def _steps_by_tokens(model, optimizer, scheduler, global_batches: list[GlobalBatch], batch_of, lengths: list[int],
                     accelerator, max_grad_norm: float):
    """Global batches cut into micro-batches by a token budget. Yields a StepResult after each
    optimizer step (of the counted notes: stand-ins are left out)."""
    for i, global_batch in enumerate(global_batches):
        loss_sum = accumulate_global_batch(model, global_batch, batch_of, accelerator)
        counted = [n for m in global_batch.micro_batches if m.counted for n in m.indices]
        norm = _clip(accelerator, model, max_grad_norm)
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        yield StepResult(loss_sum, len(counted), sum(lengths[n] for n in counted), norm, learning_rate, i + 1)


def note_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each note's mean binary cross-entropy over the codes, shape (notes,)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none").mean(dim=1)


def accumulate_global_batch(model, global_batch: GlobalBatch, batch_of, accelerator) -> float:
    """Backward passes over this process's micro-batches of one global batch, leaving in the
    gradients the gradient of the global batch's loss: the mean over its notes of their
    `note_losses`, however the notes were split. Returns the summed loss of the counted notes.

    Each micro-batch's summed per-note loss is scaled by 1 / (notes in the global batch), times
    the number of processes because DDP (and FSDP) average gradients over processes. Gradients
    are synchronised only on the last micro-batch (`no_sync` on the others). Every process runs
    as many micro-batches (stand-ins pad the shorter shares, equal_micro_batches), which FSDP
    needs (it gathers weights in every forward and backward pass); DDP would also pair up its
    all-reduces with unequal counts, since each process runs exactly one synchronised backward."""
    scale = accelerator.num_processes / global_batch.notes
    last = len(global_batch.micro_batches) - 1
    total = 0.0
    for k, micro in enumerate(global_batch.micro_batches):
        batch = batch_of(micro.indices)
        with accelerator.no_sync(model) if k < last else nullcontext():
            losses = note_losses(model(batch["input_ids"], batch["attention_mask"]), batch["labels"])
            accelerator.backward(losses.sum() * (scale if micro.counted else 0.0))
        if micro.counted:
            total += losses.sum().item()
    return total


@torch.no_grad()
def init_output_bias(coder, train_set: CodedNotes, labels: list[int] | None = None) -> None:
    """Start each code's output bias at the log-odds of its (smoothed) training prevalence, so
    the first epoch is not spent learning that nearly every code is rare (Lin et al. 2017's prior
    initialisation); with thousands of codes this is most of what an epoch would otherwise do.
    `labels`: only these codes' (the new codes of a fine-tuned model: its trained codes keep
    their trained bias); default: all."""
    counts = np.zeros(len(coder.codes))
    for note_labels in train_set.labels:
        counts[note_labels] += 1
    prevalence = (counts + 0.1) / (len(train_set) + 0.2)
    bias = torch.from_numpy(np.log(prevalence / (1 - prevalence))).float()
    if labels is None:
        coder.head.output_bias.copy_(bias)
    else:
        rows = torch.tensor(labels, dtype=torch.long)
        coder.head.output_bias[rows] = bias[rows].to(coder.head.output_bias.device)


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


@torch.no_grad()
def predict_scores_by_tokens(model, batches, accelerator, n_documents: int, n_codes: int) -> np.ndarray:
    """Probabilities (documents, codes) in dataset order, from (micro-batch collated on the
    device, counted) pairs that each process cut from its own disjoint share of the documents.
    A stand-in's (counted False) forward pass runs, for the collectives, and its scores are
    dropped."""
    model.eval()
    index = [torch.empty(0, dtype=torch.long)]
    rows = [torch.empty((0, n_codes))]
    for batch, counted in batches:
        probabilities = torch.sigmoid(model(batch["input_ids"], batch["attention_mask"]).float()).cpu()
        if counted:
            index.append(batch["index"].cpu())
            rows.append(probabilities)
    return gather_scores(accelerator, torch.cat(index), torch.cat(rows), n_documents)


def _publish_best(best, output_dir: Path, metrics: dict) -> None:
    """The best model becomes the output folder's model files (config with the tuned
    threshold, weights, tokenizer, metrics, card); the training log stays beside them."""
    staging = output_dir / "model.tmp"
    best.save_pretrained(staging, metrics=metrics)
    for item in staging.iterdir():
        item.replace(output_dir / item.name)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(output_dir / "best", ignore_errors=True)
