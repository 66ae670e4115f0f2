"""The Accelerate configs in configs/accelerate/ (what `accelerate launch --config_file` reads):
each loads with Accelerate's own reader, says what its name says, uses only keys that
`accelerate launch` knows, and turns into the launcher's settings and plugins as intended; and
benchmarks/gpu_train.py runs (tiny, on CPU) and prints its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"
EXPECTED = {  # file: (distributed_type, machines); 8 processes per machine
    "ddp_1node_8gpu.yaml": ("MULTI_GPU", 1),
    "ddp_2node_8gpu.yaml": ("MULTI_GPU", 2),
    "fsdp_1node_8gpu.yaml": ("FSDP", 1),
    "fsdp_2node_8gpu.yaml": ("FSDP", 2),
    "deepspeed_zero2_1node_8gpu.yaml": ("DEEPSPEED", 1),
    "deepspeed_zero2_2node_8gpu.yaml": ("DEEPSPEED", 2),
}


def launch_option_names() -> set[str]:
    """Every option `accelerate launch` has, by its argparse name."""
    from accelerate.commands.launch import launch_command_parser

    return {action.dest for action in launch_command_parser()._actions}


def unknown_nested_keys(path: Path) -> list[str]:
    """Keys under fsdp_config / deepspeed_config that `accelerate launch` would silently ignore.

    Accelerate's reader rejects unknown top-level keys but copies the nested sections onto the
    launcher's options as they are (fsdp_config's keys with an fsdp_ prefix), so a misspelt one
    is dropped without a word. The options it can set are the launcher's own."""
    values = yaml.safe_load(path.read_text())
    options = launch_option_names()
    unknown = []
    for section, prefix in (("fsdp_config", "fsdp_"), ("deepspeed_config", "")):
        for key in values.get(section) or {}:
            name = key if key.startswith(prefix) else prefix + key
            if name not in options:
                unknown.append(f"{section}.{key}")
    return unknown


def launcher_settings(path: Path) -> tuple:
    """(options, environment) that `accelerate launch --config_file PATH` would start its
    processes with, computed by the launcher's own functions (nothing is started)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DistributedType
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    flags = ["--machine_rank", "1", "--main_process_ip", "10.0.0.1"] if "2node" in path.name else []
    args = launch_command_parser().parse_args(["--config_file", str(path), *flags, "-m", "clem_icd.cli", "train"])
    args, defaults, _ = _validate_launch_command(args)
    if defaults.distributed_type == DistributedType.DEEPSPEED:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate_and_says_what_its_name_says(name):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    path = CONFIGS / name
    config = ClusterConfig.from_yaml_file(str(path))
    kind, machines = EXPECTED[name]
    assert config.distributed_type == DistributedType[kind]
    assert (config.num_machines, config.num_processes) == (machines, 8 * machines)
    assert config.mixed_precision == "bf16"
    assert unknown_nested_keys(path) == []
    if machines > 1:  # node 0's address is given at launch (--main_process_ip), never baked in
        assert config.main_process_ip is None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_launch_turns_config_into_the_intended_processes_and_plugins(name):
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    args, env = launcher_settings(CONFIGS / name)
    kind, machines = EXPECTED[name]
    assert int(args.nproc_per_node) == 8
    if machines > 1:  # one launcher per node, told its rank and where node 0 is
        assert (int(args.nnodes), args.node_rank, args.rdzv_endpoint) == (2, 1, "10.0.0.1:29500")
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    with mock.patch.dict(os.environ, env):
        if kind == "FSDP":
            from torch.distributed.fsdp import StateDictType

            plugin = FullyShardedDataParallelPlugin()
            assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FULL_SHARD
            assert plugin.transformer_cls_names_to_wrap == ["ModernBertEncoderLayer"]
            assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
            assert plugin.cpu_ram_efficient_loading is False
        if kind == "DEEPSPEED":
            plugin = DeepSpeedPlugin()
            assert plugin.deepspeed_config["zero_optimization"]["stage"] == 2
            # Left to the trainer, which derives it from the recipe; a value in the config
            # (ACCELERATE_GRADIENT_ACCUMULATION_STEPS) would override the trainer's.
            assert plugin.gradient_accumulation_steps == "auto"
            assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env
            if machines > 1:  # torchrun-style launcher per node, no ssh / hostfile
                assert args.deepspeed_multinode_launcher == "standard"


@pytest.mark.parametrize("name", ["fsdp_1node_8gpu.yaml", "fsdp_2node_8gpu.yaml"])
def test_fsdp_wraps_a_layer_class_that_transformers_has(name):
    from transformers.models.modernbert import modeling_modernbert

    values = yaml.safe_load((CONFIGS / name).read_text())["fsdp_config"]
    for layer in values["fsdp_transformer_layer_cls_to_wrap"].split(","):
        assert isinstance(getattr(modeling_modernbert, layer, None), type), layer
    assert layer in modeling_modernbert.ModernBertPreTrainedModel._no_split_modules


def test_misspelt_keys_are_caught(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    values = yaml.safe_load((CONFIGS / "fsdp_1node_8gpu.yaml").read_text())
    top = tmp_path / "top.yaml"
    top.write_text(yaml.safe_dump({**values, "num_proceses": 8}))
    with pytest.raises(ValueError, match="num_proceses"):  # Accelerate's own reader refuses these
        ClusterConfig.from_yaml_file(str(top))
    nested = tmp_path / "nested.yaml"
    fsdp = dict(values["fsdp_config"])
    fsdp["fsdp_transformer_layer_cls_to_warp"] = fsdp.pop("fsdp_transformer_layer_cls_to_wrap")
    nested.write_text(yaml.safe_dump({**values, "fsdp_config": fsdp}))
    ClusterConfig.from_yaml_file(str(nested))  # ...but not nested ones, which the launcher would drop
    assert unknown_nested_keys(nested) == ["fsdp_config.fsdp_transformer_layer_cls_to_warp"]
    deepspeed = tmp_path / "deepspeed.yaml"
    ds_values = yaml.safe_load((CONFIGS / "deepspeed_zero2_1node_8gpu.yaml").read_text())
    deepspeed.write_text(yaml.safe_dump({**ds_values, "deepspeed_config": {"zero_stag": 2}}))
    assert unknown_nested_keys(deepspeed) == ["deepspeed_config.zero_stag"]


@pytest.mark.slow
def test_gpu_train_benchmark_smoke_prints_its_figures():
    """benchmarks/gpu_train.py --smoke: the whole path (synthetic long notes, the trainer with the
    shipped MIMIC recipe, the figures) on a tiny ModernBERT on CPU."""
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_train.sh"), "--smoke"], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    figures = next(line for line in lines if line.startswith("tokens/s:"))
    assert float(figures.split()[1].replace(",", "")) > 0
    assert any(line.startswith("steps: 3 ") and "notes: 6 (6 at max_length)" in line for line in lines), lines
    assert any(line.startswith("peak RSS: ") and line.endswith(" GiB") for line in lines), lines
