"""Training configuration: a YAML recipe (configs/*.yaml) plus `key=value` overrides."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

import yaml

from clem_icd.errors import ClemError


@dataclass
class TrainConfig:
    # what to train
    model: str = "clem_icd"  # clem_icd | tfidf
    encoder: str = "answerdotai/ModernBERT-base"  # hub id or local folder
    tokenizer: str | None = None  # default: the encoder's
    encoder_config: dict | None = None  # a HF config dict: random initialisation (tests, benchmarks)
    head: str = "laat"
    max_length: int = 8192
    chunk_size: int = 8192
    attention_dim: int = 512
    label_query_init: str = "random"
    attn_implementation: str | None = None
    # optimisation
    epochs: int = 20
    learning_rate: float = 5e-5
    head_learning_rate: float | None = None  # default: learning_rate
    weight_decay: float = 0.0
    warmup_steps: int = 2000  # optimizer steps; capped at 10% of all steps for short runs
    batch_size: int = 16  # global: documents per optimizer step, over all processes
    micro_batch_size: int = 1  # documents per forward pass on one device
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto (bf16 where supported) | no | bf16 | fp16
    gradient_checkpointing: bool = False
    early_stopping_patience: int = 5  # epochs without a better val mAP
    eval_batch_size: int = 8
    length_grouping: bool = True
    seed: int = 42
    trackers: list[str] = field(default_factory=list)  # tensorboard | wandb | mlflow
    # TF-IDF baseline (model: tfidf)
    tfidf: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model not in ("clem_icd", "tfidf"):
            raise ClemError(f"model must be 'clem_icd' or 'tfidf', got '{self.model}'")
        if self.batch_size < 1 or self.micro_batch_size < 1 or self.batch_size % self.micro_batch_size:
            raise ClemError(f"batch_size ({self.batch_size}) must be a positive multiple of "
                            f"micro_batch_size ({self.micro_batch_size})")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ClemError(f"mixed_precision must be auto, no, bf16 or fp16, got '{self.mixed_precision}'")

    def to_dict(self) -> dict:
        return asdict(self)


def load_train_config(path: Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a recipe and apply `key=value` overrides (values parsed as YAML: 3e-5, true, [a, b])."""
    values = read_recipe(Path(path)) if path is not None else {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ClemError(f"override '{item}' is not key=value")
        try:
            values[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ClemError(f"override '{item}': the value is not valid YAML") from None
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"{path}: " if path else ""
        raise ClemError(f"{where}unknown config key(s): {', '.join(unknown)}")
    try:
        return TrainConfig(**{key: _coerce(key, value) for key, value in values.items()})
    except TypeError as exc:
        raise ClemError(f"invalid config: {exc}") from None


def read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A recipe's keys; `inherit: other.yaml` (relative to the file) is read first and then
    overridden, so variants of a recipe say only what differs."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ClemError(f"{path}: cannot read config ({exc.__class__.__name__})") from None
    if not isinstance(values, dict):
        raise ClemError(f"{path}: a config is a mapping of keys to values")
    parent = values.pop("inherit", None)
    if parent is None:
        return values
    parent_path = (path.parent / parent).resolve()
    if parent_path in seen:
        raise ClemError(f"{path}: 'inherit' loops back to {parent_path}")
    return read_recipe(parent_path, (*seen, parent_path)) | values


def _coerce(key: str, value):
    """YAML reads 1e-4 (no dot) as a string; numbers are numbers here, whatever the spelling."""
    wanted = get_type_hints(TrainConfig)[key]
    for kind in (float, int):
        if isinstance(value, str) and kind in (wanted, *getattr(wanted, "__args__", ())):
            try:
                return kind(value)
            except ValueError:
                raise ClemError(f"config key '{key}': '{value}' is not a number") from None
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and str in (wanted, *getattr(wanted, "__args__", ())):
        return "yes" if value else "no"  # YAML 1.1 reads `no` as false (mixed_precision: no)
    return value
