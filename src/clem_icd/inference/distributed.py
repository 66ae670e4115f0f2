"""Scoring notes on one process or on the processes of `accelerate launch`: each process scores its
share of the batches, every process runs as many forward passes, and the rows are gathered back
in dataset order on every process. Training's val scoring (clem_icd.training.trainer) and
`clem-icd evaluate`, `fuse` and `match` share the gather, so there is one way rows cross processes.

Plain inference does not wrap the model (each process holds all of it, so a forward needs no
collective), yet the shares are padded with stand-in batches to equal counts all the same: a
model sharded under FSDP or ZeRO-3 gathers its weights in every forward, and one process running
a forward fewer would leave the others waiting for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from clem_icd.batching import pad_batch, token_budget_batches


def distributed_on_cpu() -> bool:
    """Whether to run on CPU: asked for (ACCELERATE_USE_CPU, which `accelerate launch --cpu` sets),
    or several processes launched on a machine without a GPU. Accelerate's shared state joins
    the processes into one gloo group only when told `cpu` from the start: without it, each of
    them would work alone (and all write the same output folder)."""
    from accelerate.utils import parse_flag_from_env

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return parse_flag_from_env("ACCELERATE_USE_CPU") or (several and not torch.cuda.is_available())


@dataclass(frozen=True)
class Processes:
    """The processes that share the work: this one's index, how many there are, and its device
    (under a launcher, the one Accelerate gives it: cuda:LOCAL_RANK, or cpu)."""

    index: int = 0
    count: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def gather(self, tensors):
        """Accelerate's gather (concatenated along the first dimension, in process order); the
        tensors themselves on one process."""
        if self.count == 1:
            return tensors
        from accelerate.utils import gather

        return gather(tensors)

    def wait(self) -> None:
        """A barrier (nothing on one process)."""
        if self.count > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def current_processes() -> Processes:
    """The processes of this run: one, or those of `accelerate launch` / torchrun (WORLD_SIZE),
    joined into Accelerate's process group (gloo on CPU, NCCL on GPUs) the first time. On one
    process no group is made and no global state is touched."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    from accelerate import PartialState

    state = PartialState(cpu=distributed_on_cpu())
    # On CPU Accelerate says cpu:0 (an index per process), which safetensors refuses as a device.
    device = torch.device("cpu") if state.device.type == "cpu" else state.device
    return Processes(state.process_index, state.num_processes, device)


def gather_scores(processes, index: torch.Tensor, rows: torch.Tensor, n_documents: int,
                  chunk: int = 256) -> np.ndarray:
    """Rows scored by each process for disjoint document indices, gathered into one
    (documents, columns) array on every process. Collectives need the same shape on every
    process, and the processes hold different numbers of rows: so rows go in chunks of a fixed
    size, as many chunks as the process with the most rows needs, padded with index -1.
    `processes`: anything with `device` and `gather` (a Processes, or an Accelerator)."""
    device = processes.device or torch.device("cpu")
    most = int(processes.gather(torch.tensor([len(index)], device=device)).max())
    scores = np.zeros((n_documents, rows.shape[1]), dtype=np.float32)
    for start in range(0, most, chunk):
        part_index = torch.full((chunk,), -1, dtype=torch.long)
        part_rows = torch.zeros((chunk, rows.shape[1]), dtype=torch.float32)
        piece = index[start:start + chunk]
        part_index[:len(piece)] = piece
        part_rows[:len(piece)] = rows[start:start + chunk]
        all_index, all_rows = processes.gather((part_index.to(device), part_rows.to(device)))
        keep = all_index >= 0
        scores[all_index[keep].cpu().numpy()] = all_rows[keep].cpu().numpy()
    return scores


def scoring_batches(lengths: list[int], batch_size: int | None = None,
                    max_tokens: int | None = None) -> list[list[int]]:
    """The batches training scores val in, on one process: `batch_size` notes, in mega-batches
    of 50 batches in dataset order each sorted longest first (clem_icd.training.data's
    LengthGroupedBatches without shuffling), or, with `max_tokens`, all notes longest first cut
    by the token budget (its equal_micro_batches on one process). Scoring in the same batches
    gives the same rounding, which bf16 makes depend on a batch's padded shape."""
    if max_tokens is not None:
        longest_first = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return token_budget_batches(longest_first, lambda i: lengths[i], max_tokens)
    if batch_size is None or batch_size < 1:
        raise ValueError("give a batch size of at least 1 or a token budget")
    mega = batch_size * 50
    order = [i for s in range(0, len(lengths), mega)
             for i in sorted(range(s, min(s + mega, len(lengths))), key=lambda i: -lengths[i])]
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def deal_batches(batches: list[list[int]], cost: Callable[[list[int]], int], process_index: int,
                 num_processes: int) -> list[tuple[list[int], bool]]:
    """This process's batches, as (indices, counted): the batches dealt in turn (a batch keeps its
    notes, so a note is scored in the same company however many processes there are, and its
    scores do not depend on the number of processes), then stand-ins (counted False: run, their
    rows dropped) up to the busiest process's count: the cheapest batch by `cost`."""
    mine = [(batch, True) for batch in batches[process_index::num_processes]]
    most = -(-len(batches) // num_processes)
    if len(mine) < most:
        cheapest = min(batches, key=cost)
        mine += [(cheapest, False)] * (most - len(mine))
    return mine


@torch.no_grad()
def score_token_batches(model, sequences: list[list[int]], batches: list[list[int]], *, pad_id: int,
                        device: torch.device, dtype: torch.dtype | None, processes: Processes,
                        progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Probabilities (len(sequences), codes) in the order of `sequences`: `batches` (note indices,
    each padded to its longest note) dealt to the processes, each forward under autocast in
    `dtype` (None: fp32), the sigmoid taken in fp32 on the device, as training scores val.
    `progress(n)`: notes this process has scored so far."""
    model.eval()
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
    index, rows, done = [torch.empty(0, dtype=torch.long)], [], 0
    for batch, counted in deal_batches(batches, lambda b: len(b) * max(len(sequences[i]) for i in b),
                                       processes.index, processes.count):
        input_ids, mask = pad_batch([sequences[i] for i in batch], pad_id)
        with autocast:
            logits = model(input_ids.to(device), mask.to(device))
        if not counted:
            continue
        index.append(torch.tensor(batch, dtype=torch.long))
        rows.append(torch.sigmoid(logits.float()).cpu())
        done += len(batch)
        if progress:
            progress(done)
    n_codes = len(model.codes)
    return gather_scores(processes, torch.cat(index), torch.cat(rows) if rows else torch.empty((0, n_codes)),
                         len(sequences))
