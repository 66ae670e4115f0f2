"""FSDP with one unit per ModernBERT encoder layer (configs/accelerate/fsdp_*.yaml) on the fast
attention path, and saving the best model from sharded weights.

FSDP gathers a wrapped layer's weights in hooks around the layer's module call, so the fast path
(clem_icd.longcontext) must call each layer as a module; and saving needs the full weights that
`accelerator.get_state_dict`, a collective under FSDP, gathers to the main process.

The distributed test runs this file as a script under torchrun: 2 CPU processes joined with gloo.
Accelerate takes FSDP only on accelerators (on CPU processes it would wrap the model in DDP), so
the script sets Accelerate's state to FSDP after creating the Accelerator; from there on the
model is prepared, sharded, run and gathered by Accelerate's and PyTorch's own FSDP 2 code, as on
GPUs. FSDP 1 (torch's FullyShardedDataParallel, one wrapper module per layer) is checked on the
forward and backward pass only: its full state dict does not gather on CPU in this torch build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from model_fixtures import minilm_path, tiny_modernbert

from clem_icd.longcontext import modernbert_forward

CODES = ["I10", "E11.9", "J18.9", "N17.9", "0DT70ZZ"]
LENGTHS = (200, 150)  # both past the local layers' +-64 window; the second padded


def make_coder(attention: str = "auto"):
    from clem_icd.model import ICDCoder, ICDCoderConfig

    torch.manual_seed(0)
    return ICDCoder.from_config(ICDCoderConfig(encoder=str(minilm_path()), codes=CODES, encoder_config=tiny_modernbert(),
                                               max_length=256, chunk_size=256, attention=attention))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (len(LENGTHS), max(LENGTHS)), generator=generator)
    mask = (torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    return ids * mask, mask


# ---------------------------------------------------------------------- one process


def test_fast_path_calls_each_layer_module():
    """What FSDP needs: hooks on the layer modules run, once per layer and forward, in both
    fast modes; the stock forward of the same model still works afterwards and agrees."""
    coder = make_coder()
    encoder = coder.encoder.eval()
    ids, mask = batch()
    calls = []
    handles = [layer.register_forward_pre_hook(lambda module, args, i=i: calls.append(i))
               for i, layer in enumerate(encoder.layers)]
    with torch.no_grad():
        for mode in ("blockwise", "packed"):
            calls.clear()
            fast = modernbert_forward(encoder, ids, mask, mode).last_hidden_state
            assert calls == list(range(len(encoder.layers))), mode
            calls.clear()
            stock = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            assert calls == list(range(len(encoder.layers)))
            torch.testing.assert_close(fast[mask.bool()], stock[mask.bool()], rtol=0, atol=1e-5)
    for handle in handles:
        handle.remove()


def test_gradient_checkpointing_recomputes_inside_the_layer_call():
    """With activation checkpointing on, the layer module is called once per forward (its
    hooks, FSDP's among them, stay outside the checkpoint) while its insides run twice: once
    in forward, once recomputed in backward."""
    coder = make_coder()
    encoder = coder.encoder.train()
    encoder.activation_checkpointing_enable()
    ids, mask = batch()
    layer_calls, mlp_calls = [], []
    layer = encoder.layers[1]
    handles = [layer.register_forward_pre_hook(lambda *_: layer_calls.append(1)),
               layer.mlp.register_forward_pre_hook(lambda *_: mlp_calls.append(1))]
    modernbert_forward(encoder, ids, mask, "blockwise").last_hidden_state.square().sum().backward()
    assert (len(layer_calls), len(mlp_calls)) == (1, 2)
    for handle in handles:
        handle.remove()


def test_save_pretrained_writes_a_given_state_dict(tmp_path):
    """save_pretrained(state_dict=...) writes what save_pretrained() writes when given the
    model's own weights (the same bytes), and what it is given otherwise, loadably."""
    from clem_icd.model import ICDCoder

    coder = make_coder().eval()
    coder.save_pretrained(tmp_path / "own")
    coder.save_pretrained(tmp_path / "given", state_dict=coder.state_dict())
    own, given = ((tmp_path / name / "model.safetensors").read_bytes() for name in ("own", "given"))
    assert own == given
    other = {name: tensor + 0.01 for name, tensor in coder.state_dict().items()}
    coder.save_pretrained(tmp_path / "other", state_dict=other)
    loaded = ICDCoder.from_pretrained(tmp_path / "other")
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, other[name], rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------------- two processes


@pytest.mark.slow
def test_layer_wrapped_fsdp_runs_the_fast_path_and_saves_the_best_model(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                                                 os.environ.get("PYTHONPATH")]))}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-8000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["layers"] == ["FSDPModernBertEncoderLayer"] * 3 and report["sharded"]
    for mode in ("packed", "blockwise"):
        assert report[f"fsdp2 {mode} logits"] <= 1e-6, report
        assert report[f"fsdp2 {mode} gradients"] <= 1e-6, report
        assert report[f"fsdp1 {mode} logits"] <= 1e-6, report
        assert report[f"fsdp1 {mode} gradients"] <= 1e-6, report
    assert report["trained"] > 1e-3, report  # the saved weights are the stepped ones
    assert report["reloaded"] <= 1e-6, report


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


def _worker(out: Path) -> None:
    """Under torchrun, 2 processes: FSDP 2 through Accelerate, per-layer units, the fast path
    with activation checkpointing, against the unsharded model; one optimizer step; the best
    model saved by the trainer's _save_best and loaded back. Then FSDP 1 on forward and backward."""
    import copy

    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from torch.distributed.tensor import DTensor

    from clem_icd.model import ICDCoder
    from clem_icd.training.trainer import _save_best

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2, accelerator.state
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, reshard_after_forward=True, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["ModernBertEncoderLayer"], state_dict_type="FULL_STATE_DICT",
        cpu_ram_efficient_loading=False)
    # What AcceleratorState does with an FSDP plugin on GPUs (PartialState too: each
    # AcceleratorState() made later, inside prepare among others, copies its distributed_type).
    accelerator.state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    assert accelerator.is_fsdp2
    report = {}
    ids, mask = batch()
    weights = torch.linspace(-1, 1, len(CODES))  # a loss whose gradient differs per code

    coder = make_coder()
    reference = copy.deepcopy(coder).train()
    coder.encoder.activation_checkpointing_enable()
    model, optimizer = accelerator.prepare(coder, torch.optim.AdamW(coder.parameters(), lr=1e-2))
    layers = accelerator.unwrap_model(model).encoder.layers
    report["layers"] = [type(layer).__name__ for layer in layers]
    report["sharded"] = all(isinstance(p, DTensor) for p in layers.parameters())
    for mode in ("packed", "blockwise"):
        for coder_ in (reference, accelerator.unwrap_model(model)):
            coder_.config.attention = mode
        expected = reference(ids, mask)
        reference.zero_grad()
        (expected * weights).sum().backward()
        got = model(ids, mask)
        (got * weights).sum().backward()
        report[f"fsdp2 {mode} logits"] = _max_diff(got, expected)
        grads = {name: p.grad.full_tensor() for name, p in model.named_parameters()}
        report[f"fsdp2 {mode} gradients"] = max(_max_diff(grads[name], p.grad) for name, p in reference.named_parameters())
        if mode == "blockwise":
            optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        trained = model(ids, mask)
    assert accelerator.is_fsdp2
    report["trained"] = _max_diff(trained, reference.eval()(ids, mask))
    _save_best(accelerator, model, np.zeros((len(LENGTHS), len(CODES)), dtype=np.float32), out, 1)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        loaded = ICDCoder.from_pretrained(out / "best-epoch-001")
        loaded.config.attention = "blockwise"
        with torch.no_grad():
            report["reloaded"] = _max_diff(loaded(ids, mask), trained)

    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.modernbert.modeling_modernbert import ModernBertEncoderLayer

    coder = make_coder().train()
    reference = copy.deepcopy(coder)
    model = FullyShardedDataParallel(coder, auto_wrap_policy=ModuleWrapPolicy({ModernBertEncoderLayer}),
                                     device_id=torch.device("cpu"), use_orig_params=True)
    assert all(isinstance(layer, FullyShardedDataParallel) for layer in coder.encoder.layers)
    for mode in ("packed", "blockwise"):
        coder.config.attention = reference.config.attention = mode
        expected = reference(ids, mask)
        reference.zero_grad()
        (expected * weights).sum().backward()
        model.zero_grad()
        got = model(ids, mask)
        (got * weights).sum().backward()
        report[f"fsdp1 {mode} logits"] = _max_diff(got, expected)
        with FullyShardedDataParallel.summon_full_params(model, with_grads=True):
            grads = {name.replace("_fsdp_wrapped_module.", ""): p.grad.clone() for name, p in model.named_parameters()}
        report[f"fsdp1 {mode} gradients"] = max(_max_diff(grads[name], p.grad) for name, p in reference.named_parameters())
    if accelerator.is_main_process:
        (out / "report.json").write_text(json.dumps(report, indent=1))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
