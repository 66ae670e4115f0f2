"""Every process runs as many forward passes per optimizer step and per evaluation, whatever its
share of the notes: FSDP gathers each layer's weights in every forward pass (validation too), in
collectives that all processes must join, so unequal counts would hang.

The distributed tests train a tiny ModernBERT by a token budget with 2 CPU processes (gloo),
under DDP and under FSDP 2 with one unit per encoder layer and reshard_after_forward (the shipped
configs/accelerate/fsdp_*.yaml), on a corpus where the shares are deliberately unequal: a few
long notes among short ones, so that the process dealt more long notes needs more forward
passes. Each run is a subprocess with a timeout, so that a hang fails the test. Against one
process with the same global batches: the first optimizer step's gradients within 1e-5 (fp32),
the logged losses within 1e-5, the val metrics within 0.01.

This file is also the worker script: `python tests/test_equal_forwards.py OUT DATA ddp|fsdp`,
under torchrun for two processes. Accelerate takes FSDP only on accelerators, so for `fsdp` the
worker switches the Accelerator the trainer creates to FSDP 2 (as tests/test_fsdp.py does), and
everything after that is the trainer's and Accelerate's own code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from launch_fixtures import cpu_worker_env
from model_fixtures import minilm_path, tiny_modernbert

from clem_icd.data.synthetic import make_synthetic_dataset
from clem_icd.training.data import TokenBudgetBatches, budget_micro_batches

MAX_LENGTH = 256
BUDGET = 256  # a long note (256 tokens) goes alone; four short ones share a pass
BATCH = 8


def recipe_values(data: Path) -> dict:
    return {"model.encoder": str(minilm_path()), "model.encoder_config": json.dumps(tiny_modernbert()),
            "model.max_length": MAX_LENGTH, "model.chunk_size": MAX_LENGTH, "model.attention_dim": 16,
            "data.batch_size": BATCH, "data.max_batch_tokens": BUDGET, "data.eval_max_batch_tokens": BUDGET,
            "optim.learning_rate": "1e-3", "optim.head_learning_rate": "1e-2", "optim.warmup_steps": 0,
            "train.epochs": 2, "train.early_stopping_patience": 10, "train.mixed_precision": "no",
            "train.checkpoint_every": 0, "train.log_every": 1, "train.seed": 3}


def unequal_corpus(path: Path) -> None:
    """Synthetic notes, most cut to their first 25 words (short), some left whole (long: past
    MAX_LENGTH tokens, so truncated to it): one train note in five, and three val notes (an odd
    number, so that one process is dealt two and needs a forward pass more)."""
    from clem_icd.codes import CodeDictionary, CodeSystem
    from clem_icd.data.dataset import DatasetWriter

    source = path.parent / "source"
    make_synthetic_dataset(source, n_documents=60, n_codes=8, seed=4)
    documents = pl.read_parquet(source / "documents.parquet").filter(pl.col("split") != "test")
    val_rank = {i: rank for rank, i in enumerate(i for i, split in enumerate(documents["split"]) if split == "val")}
    texts = [text if (i % 5 == 0 if i not in val_rank else val_rank[i] < 3) else " ".join(text.split()[:25])
             for i, text in enumerate(documents["text"])]
    with DatasetWriter(path) as writer:
        writer.write(documents["id"].to_list(), texts, documents["codes"].to_list(), documents["split"].to_list())
        codes = sorted({c for row in documents["codes"].to_list() for c in row})
        writer.finish(code_systems={c: CodeSystem.ICD10CM for c in codes}, dictionary=CodeDictionary(),
                      manifest={"source": "test", "options": {}, "inputs": []})


def run(args: list[str], env: dict, timeout: int) -> None:
    try:
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{args[-1]} run still going after {timeout} s: a collective left waiting? "
                    f"{(exc.stderr or b'')[-3000:]!r}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process reference, then DDP and FSDP with 2 processes, on the unequal corpus."""
    root = tmp_path_factory.mktemp("equal-forwards")
    data = root / "data"
    unequal_corpus(data)
    env = cpu_worker_env()
    run([sys.executable, __file__, str(root / "one"), str(data), "ddp"], env, timeout=300)
    for backend in ("ddp", "fsdp"):
        run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
             __file__, str(root / backend), str(data), backend], env, timeout=300)
    return root


def token_lengths(data: Path) -> tuple[list[int], list[int]]:
    """Train and val token counts, from the token cache the runs filled."""
    from clem_icd.data.dataset import PreparedDataset
    from clem_icd.model.coder import load_tokenizer
    from clem_icd.training.trainer import coded_splits

    dataset = PreparedDataset.load(data)
    train, val = coded_splits(dataset, dataset.code_list, load_tokenizer(str(minilm_path())), MAX_LENGTH)
    return train.lengths, val.lengths


@pytest.mark.slow
def test_the_shares_are_unequal(runs):
    """The corpus does what the other tests need: without stand-ins, the two processes would run
    different numbers of forward passes in some training steps and in validation."""
    train, val = token_lengths(runs / "data")
    sampler = TokenBudgetBatches(train, BATCH, BUDGET, seed=3)
    unequal_steps = [batch for batch in sampler.global_batches()
                     if len({len(budget_micro_batches(batch, train, BUDGET, p, 2)) for p in range(2)}) > 1]
    assert unequal_steps
    notes = list(range(len(val)))
    assert len({len(budget_micro_batches(notes, val, BUDGET, p, 2)) for p in range(2)}) > 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "fsdp"])
def test_two_unequal_processes_train_what_one_trains(runs, backend):
    one, two = runs / "one", runs / backend
    reports = [json.loads((two / f"forwards.{rank}.json").read_text()) for rank in range(2)]
    # The guarantee: as many forward passes on both processes, in training and in validation;
    # the shares differ (one has more long notes, the other runs stand-ins of one short note).
    for mode in ("train", "val"):
        assert len(reports[0][mode]) == len(reports[1][mode]) > 0, mode
    assert sorted(reports[0]["train"]) != sorted(reports[1]["train"])
    assert sorted(reports[0]["val"]) != sorted(reports[1]["val"])

    # The first optimizer step's gradient: the global batch's, on 2 processes as on 1.
    expected, got = (np.load(folder / "first_step_gradients.npz") for folder in (one, two))
    assert expected.files == got.files and len(expected.files) > 10
    for name in expected.files:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-5, err_msg=name)

    steps = [[json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()] for folder in (one, two)]
    assert [r["step"] for r in steps[0]] == [r["step"] for r in steps[1]] == list(range(1, len(steps[0]) + 1))
    for a, b in zip(*steps):
        assert (b["notes"], b["tokens"]) == (a["notes"], a["tokens"])  # stand-ins are not counted
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)

    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (one, two)]
    for metric, value in metrics[0]["val@0.5"].items():
        assert metrics[1]["val@0.5"][metric] == pytest.approx(value, abs=0.01), metric
    logs = [[json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()] for folder in (one, two)]
    for a, b in zip(*logs):  # the epoch's train loss over both processes' notes
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)


# ---------------------------------------------------------------------- the worker


def _worker(out: Path, data: Path, backend: str) -> None:
    """One training through clem_icd.training.trainer.train, recording each process's forward
    passes (rows, padded length) and the first optimizer step's full gradients."""
    import accelerate
    import torch
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from clem_icd.model import ICDCoder
    from clem_icd.training.recipe import load_recipe
    from clem_icd.training.trainer import train

    forwards = {"train": [], "val": []}
    stock_forward = ICDCoder.forward

    def counted_forward(self, input_ids, attention_mask, *args, **kwargs):
        forwards["train" if self.training else "val"].append(list(input_ids.shape))
        return stock_forward(self, input_ids, attention_mask, *args, **kwargs)

    ICDCoder.forward = counted_forward

    class RecordingAdamW(torch.optim.AdamW):
        recorded = False

        def step(self, *args, **kwargs):
            if not RecordingAdamW.recorded:
                RecordingAdamW.recorded = True
                grads = [p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad  # a collective
                         for group in self.param_groups for p in group["params"]]
                if PartialState().is_main_process:
                    np.savez(out / "first_step_gradients.npz",
                             **{f"p{i:03d}": g.detach().numpy() for i, g in enumerate(grads)})
            return super().step(*args, **kwargs)

    torch.optim.AdamW = RecordingAdamW

    if backend == "fsdp":
        class FSDPAccelerator(accelerate.Accelerator):
            """What AcceleratorState does with this plugin on GPUs (tests/test_fsdp.py)."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
                self.state.fsdp_plugin = FullyShardedDataParallelPlugin(
                    fsdp_version=2, reshard_after_forward=True, auto_wrap_policy="transformer_based_wrap",
                    transformer_cls_names_to_wrap=["ModernBertEncoderLayer"], state_dict_type="FULL_STATE_DICT",
                    cpu_ram_efficient_loading=False)
                assert self.is_fsdp2

        accelerate.Accelerator = FSDPAccelerator

    recipe = load_recipe(None, [f"{k}={v}" for k, v in recipe_values(data).items()])
    train(recipe, data, out)
    (out / f"forwards.{PartialState().process_index}.json").write_text(json.dumps(forwards))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
