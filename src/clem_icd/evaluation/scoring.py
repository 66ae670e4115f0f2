"""Scoring a prepared dataset's notes with a loaded model of any kind, on the accelerator and on
the processes of `accelerate launch`: what `clem-icd evaluate`, `fuse` and `match` score with.

The neural coder reads notes as training reads val: the prepared text as stored (cleaned at
preparation if the dataset was), tokenised as the token cache is (special tokens, truncated at
max_length), in training's val batches (clem_icd.inference.distributed.scoring_batches), under
autocast in the precision its folder records for val (ICDCoderConfig.scored_precision), the
sigmoid in fp32. So `evaluate --split val` gives back training's metrics.json['val']. Options
given explicitly (precision, batch size, token budget) win over what the folder records.

Under several processes the batches are dealt to them and the scores gathered in dataset order
on every process (each process loads the whole model). A fused model fuses its members' scores,
each member scored so; the TF-IDF baseline runs its own predict_proba on every process (it is
cheap and on CPU); an open-set coder adds its description matcher's scores (`open_set_scores`
keeps a few columns and each note's best others, never the notes x code-system matrix).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from clem_icd.errors import ClemError
from clem_icd.inference.distributed import (
    Processes,
    current_processes,
    gather_scores,
    score_token_batches,
    scoring_batches,
)
from clem_icd.precision import PRECISIONS, autocast_dtype
from clem_icd.progress import progress_bar

DEFAULT_BATCH_SIZE = 8  # notes per forward pass when neither the options nor the folder say (predict's)


@dataclass(frozen=True)
class ScoringOptions:
    """device: auto (cuda if available; under a launcher, the process's own), cpu, cuda, cuda:1...
    precision: auto (what the model folder records for val, else bf16 where the device runs it
    natively, else fp32), fp32, bf16 or fp16. batch_size / max_batch_tokens: notes per forward
    pass, or a token budget (which wins); both None: the folder's record, else 8 notes."""

    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    max_batch_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ClemError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")
        if self.batch_size is not None and self.batch_size < 1:
            raise ClemError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ClemError(f"--max-batch-tokens must be at least 1 token, got {self.max_batch_tokens}")


def resolve_device(requested: str, processes: Processes) -> str:
    """The device to load models on. Under several processes each has the one Accelerate gave
    it (cuda:LOCAL_RANK, or cpu): another would put two processes on one GPU."""
    if processes.count > 1:
        own = str(processes.device)
        if requested not in ("auto", own) and not (requested == "cuda" and own.startswith("cuda")):
            raise ClemError(f"--device {requested}: under accelerate launch each process uses its own device "
                            f"(this one {own}); leave --device auto")
        return own
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ClemError(f"--device: '{requested}' is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClemError(f"--device {requested}: CUDA is not available on this machine")
    return requested


class Scorer:
    """`scorer(model, texts)` -> (len(texts), len(model.codes)) scores in the model's code order,
    for every model kind (see the module docstring). `remember(model)`: keep that model's last
    scores and give them again for the same texts (the fused column re-uses the model's own
    scores of the split instead of running the network twice)."""

    def __init__(self, options: ScoringOptions | None = None, processes: Processes | None = None):
        self.options = options or ScoringOptions()
        self.processes = processes or current_processes()
        self.device = resolve_device(self.options.device, self.processes)
        self._remembered: dict[int, tuple[object, list[str], np.ndarray]] = {}
        self._kept: set[int] = set()

    def remember(self, model) -> None:
        self._kept.add(id(model))

    def __call__(self, model, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        last = self._remembered.get(id(model))
        if last is not None and last[0] is model and last[1] == texts:
            return last[2]
        scores = self._score(model, texts)
        if id(model) in self._kept:
            self._remembered[id(model)] = (model, texts, scores)
        return scores

    def _score(self, model, texts: list[str]) -> np.ndarray:
        from clem_icd.fusion import FusedModel
        from clem_icd.matching.open_set import OpenSetCoder
        from clem_icd.model import ICDCoder

        if isinstance(model, FusedModel):
            return model.fuse([self(member, texts) for member in model.members])
        if isinstance(model, OpenSetCoder):
            return model.combine(texts, self(model.model, texts))
        if isinstance(model, ICDCoder):
            return self.coder_scores(model, texts)
        return model.predict_proba(texts)

    def _bar(self, description: str, total: int):
        """A progress bar of this process's share, on the main process only (one bar, not one
        per process)."""
        if not self.processes.is_main:
            return nullcontext(None)
        return progress_bar(description, total or None)

    # ------------------------------------------------------------------ the neural coder

    def precision_of(self, coder) -> str:
        """The precision `coder` is scored in: the option, or for 'auto' the one its folder
        records for val, or the predictor's auto (bf16 where native, else fp32)."""
        if self.options.precision == "auto" and coder.config.scored_precision:
            return coder.config.scored_precision
        return self.options.precision

    def batching_of(self, coder) -> tuple[int | None, int | None]:
        """(notes per batch, token budget): the options' when given, else the folder's record."""
        if self.options.batch_size is not None or self.options.max_batch_tokens is not None:
            return self.options.batch_size, self.options.max_batch_tokens
        recorded = coder.config.scored_batch_size, coder.config.scored_max_batch_tokens
        return recorded if recorded != (None, None) else (DEFAULT_BATCH_SIZE, None)

    def coder_scores(self, coder, texts: list[str]) -> np.ndarray:
        sequences = coder.tokenize(texts) if texts else []
        batch_size, budget = self.batching_of(coder)
        batches = scoring_batches([len(s) for s in sequences], batch_size, budget)
        dtype = autocast_dtype(self.precision_of(coder), coder.device)
        try:
            with self._bar("scoring notes", -(-len(texts) // self.processes.count)) as update:
                return score_token_batches(coder, sequences, batches, pad_id=coder.tokenizer.pad_token_id or 0,
                                           device=coder.device, dtype=dtype, processes=self.processes,
                                           progress=update)
        except torch.OutOfMemoryError:
            setting = f"--batch-size {batch_size}" if budget is None else f"--max-batch-tokens {budget}"
            raise ClemError(f"out of {coder.device} memory at {setting}: try a smaller one") from None

    # ------------------------------------------------------------------ the open label space

    def open_set_scores(self, model, texts: list[str], keep: np.ndarray, top_k: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """An open-set coder's scores without its (notes x code system) matrix: (scores of the
        columns `keep` (notes, len(keep)), per note the top_k best other columns (indices into
        model.codes, best first, ties by column order), their scores). The model's own scores
        first (on the processes, gathered), then the matcher's notes dealt to the processes."""
        if len(model.codes) >= 2 ** 24:  # the indices travel in float32 rows, exact below 2^24
            raise ClemError(f"{len(model.codes):,} codes: too many for one ranking")
        base = self(model.model, texts)
        if self.processes.count == 1:  # nothing to deal or gather: no copies of the (notes x kept) rows
            with self._bar("matching descriptions", len(texts)) as update:
                return model.sparse_scores(texts, base, keep, top_k, progress=update)
        mine = np.arange(self.processes.index, len(texts), self.processes.count)
        with self._bar("matching descriptions", len(mine)) as update:
            dense, index, values = model.sparse_scores([texts[i] for i in mine], base[mine], keep, top_k,
                                                       progress=update)
        width = dense.shape[1]
        rows = torch.from_numpy(np.concatenate([dense, values, index.astype(np.float32)], axis=1))
        gathered = gather_scores(self.processes, torch.from_numpy(mine), rows, len(texts))
        k = index.shape[1]
        return (gathered[:, :width], gathered[:, width + k:].astype(np.int64), gathered[:, width:width + k])
