"""Training recipes: YAML files with one section per concern, in the manner of torchtune.

    model:   passed as is to the model: `kind: clem_icd` (the neural coder; every other key is a
             field of clem_icd.model.config.CoderSettings) or `kind: tfidf` (the baseline; keys
             are its hyperparameters, clem_icd.baselines.tfidf.DEFAULT_CONFIG)
    data:    how notes are batched (DataSettings below)
    optim:   the optimiser and its schedule (OptimSettings)
    train:   the training loop (TrainSettings)

Each setting is defined once, in the dataclass of its section, and validated there.
`inherit: other.yaml` (relative to the file) reads another recipe first; the file then overrides
it key by key within each section, so a variant says only what differs. Command-line overrides
are dotted `section.key=value` (`optim.learning_rate=3e-5`), values parsed as YAML.

The recipes shipped with the package (clem_icd/configs/, listed by `clem-icd recipes`) are found
by name, e.g. `codiesp/minilm_cross_desc`; anything else is a path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import get_type_hints

import yaml

from clem_icd.errors import ClemError
from clem_icd.model.config import CoderSettings
from clem_icd.typecheck import checked

MODEL_KINDS = ("clem_icd", "tfidf")
SECTIONS = ("model", "data", "optim", "train")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")
# After warm-up (linear from 0): linear decay to 0 at the last step of train.epochs (PLM-ICD's),
# half a cosine down to 0, or constant.
SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class DataSettings:
    # Global batch: documents per optimizer step, over all processes, with or without a token
    # budget. In notes, not tokens: the loss is each note's mean BCE over codes, averaged over the
    # notes of the batch, and published recipes state batch sizes in documents; a batch of N
    # tokens would weigh long notes more and make the number of steps per epoch (and so the
    # learning-rate schedule) depend on the data.
    batch_size: int = 16
    micro_batch_size: int = 1  # documents per forward pass on one device; ignored with max_batch_tokens
    eval_batch_size: int = 8  # ignored when evaluation batches by tokens (eval_max_batch_tokens)
    length_grouping: bool = True  # batches of notes of similar length (little padding)
    # Token budget per forward pass on one device: as many notes as fit, notes x the longest
    # note's tokens <= max_batch_tokens (a note longer than the budget goes alone). Replaces
    # micro_batch_size, which is then ignored: the budget alone bounds memory, and a note cap
    # would undo it for short notes. None: micro_batch_size notes per forward pass.
    max_batch_tokens: int | None = None
    eval_max_batch_tokens: int | None = None  # the same for evaluation; None: max_batch_tokens

    def __post_init__(self) -> None:
        if min(self.batch_size, self.micro_batch_size, self.eval_batch_size) < 1:
            raise ClemError("data: batch sizes must be at least 1")
        for name in ("max_batch_tokens", "eval_max_batch_tokens"):
            budget = getattr(self, name)
            if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
                raise ClemError(f"data.{name} must be a whole number of tokens, at least 1 (or null), got {budget!r}")
        if self.max_batch_tokens is None and self.batch_size % self.micro_batch_size:
            raise ClemError(f"data: batch_size ({self.batch_size}) must be a multiple of "
                            f"micro_batch_size ({self.micro_batch_size})")

    @property
    def eval_budget(self) -> int | None:
        """Tokens per evaluation forward pass; None: eval_batch_size notes."""
        return self.max_batch_tokens if self.eval_max_batch_tokens is None else self.eval_max_batch_tokens


@dataclass
class OptimSettings:
    learning_rate: float = 5e-5
    head_learning_rate: float | None = None  # default: learning_rate
    weight_decay: float = 0.0
    warmup_steps: int = 2000  # optimizer steps; capped at 10% of all steps for short runs
    max_grad_norm: float = 1.0  # 0: no clipping
    schedule: str = "linear"  # linear | cosine | constant (after warm-up), over train.epochs

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ClemError(f"optim: schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.learning_rate <= 0 or (self.head_learning_rate is not None and self.head_learning_rate <= 0):
            raise ClemError("optim: learning rates must be positive")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ClemError("optim: warmup_steps, weight_decay and max_grad_norm must not be negative")


@dataclass
class TrainSettings:
    epochs: int = 20
    early_stopping_patience: int = 5  # epochs without a better val mAP
    mixed_precision: str = "auto"  # auto (bf16 where supported) | no | bf16 | fp16
    gradient_checkpointing: bool = False
    seed: int = 42
    trackers: list[str] = field(default_factory=list)  # tensorboard | wandb | mlflow
    # Checkpoints to resume from (`clem-icd train --resume`): every this many optimizer steps
    # (0: only at the end of each epoch, which always has one), keeping the newest few. They are
    # removed when training finishes.
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    # A record of the training every this many optimizer steps, and at the end of each epoch
    # (steps.jsonl in the output folder, and the trackers): loss, learning rate, gradient norm,
    # notes and tokens per second, peak memory.
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ClemError(f"train: mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, "
                            f"got '{self.mixed_precision}'")
        if self.epochs < 1 or self.early_stopping_patience < 1:
            raise ClemError("train: epochs and early_stopping_patience must be at least 1")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ClemError("train: checkpoint_every must not be negative and keep_checkpoints must be at least 1")
        if self.log_every < 1:
            raise ClemError(f"train: log_every must be at least 1 (optimizer steps between step records), "
                            f"got {self.log_every}")


SECTION_TYPES = {"data": DataSettings, "optim": OptimSettings, "train": TrainSettings}


@dataclass
class Recipe:
    kind: str = "clem_icd"  # clem_icd | tfidf
    model: CoderSettings | dict = field(default_factory=CoderSettings)  # dict: TF-IDF options
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def to_dict(self) -> dict:
        model = self.model.settings() if isinstance(self.model, CoderSettings) else dict(self.model)
        return {"model": {"kind": self.kind, **model}, "data": asdict(self.data),
                "optim": asdict(self.optim), "train": asdict(self.train)}


# ---------------------------------------------------------------------------------- loading


def load_recipe(recipe: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """A recipe by packaged name or path (None: all defaults), with dotted `key=value` overrides."""
    path = resolve_recipe(recipe) if recipe is not None else None
    values = read_recipe(path) if path is not None else {}
    origins = {}
    for item in overrides:
        section, key, value = _parse_override(item)
        values.setdefault(section, {})[key] = value
        origins[section, key] = f"override '{item}': "  # its errors name the override, not the file
    return build_recipe(values, where=f"{path}: " if path else "", origins=origins)


def build_recipe(values: dict, where: str = "", origins: dict[tuple[str, str], str] | None = None) -> Recipe:
    """Validate a recipe's sections (as read from YAML) and build it. A value's error starts
    with `where` (the file), or with `origins[section, key]` for a value set elsewhere."""
    origins = origins or {}

    def name(section: str, key: str) -> str:
        return f"{origins.get((section, key), where)}recipe key '{section}.{key}'"

    model = dict(values.get("model") or {})
    kind = model.pop("kind", "clem_icd")
    if kind not in MODEL_KINDS:
        raise ClemError(f"{where}model.kind must be one of {', '.join(MODEL_KINDS)}, got '{kind}'")
    if kind == "tfidf":
        from clem_icd.baselines.tfidf import tfidf_options

        model_settings: CoderSettings | dict = tfidf_options(model, name=lambda key: name("model", key))
    else:
        model_settings = _section(CoderSettings, "model", model, where, name)
    sections = {section: _section(cls, section, values.get(section) or {}, where, name)
                for section, cls in SECTION_TYPES.items()}
    return Recipe(kind=kind, model=model_settings, **sections)


def _section(cls, section: str, values: dict, where: str, name):
    if not isinstance(values, dict):
        raise ClemError(f"{where}section '{section}' must be a mapping of keys to values")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ClemError(f"{where}unknown key(s) in '{section}': {', '.join(unknown)} (known: {', '.join(known)})")
    hints = get_type_hints(cls)
    # Every value against its field's type hint (clem_icd.typecheck): a value of the wrong type
    # would otherwise reach the model as something else ("false" is true, 16.0 is not an int).
    return cls(**{key: checked(name(section, key), hints[key], value) for key, value in values.items()})


def _parse_override(item: str) -> tuple[str, str, object]:
    dotted, sep, raw = item.partition("=")
    dotted = dotted.strip()
    section, dot, key = dotted.partition(".")
    if not sep or not dotted:
        raise ClemError(f"override '{item}' is not section.key=value (e.g. optim.learning_rate=3e-5)")
    if not dot:
        home = _section_of(dotted)
        hint = f": write {home}.{dotted}={raw}" if home else ""
        raise ClemError(f"override '{item}' needs its section{hint} (sections: {', '.join(SECTIONS)})")
    if section not in SECTIONS or not key:
        raise ClemError(f"override '{item}': unknown section '{section}' (sections: {', '.join(SECTIONS)})")
    try:
        return section, key, yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ClemError(f"override '{item}': the value is not valid YAML") from None


def _section_of(key: str) -> str | None:
    """The section an old flat key belongs to now (for the messages that say how to update)."""
    if key in ("model", "kind"):
        return "model"
    for name, cls in (("model", CoderSettings), *SECTION_TYPES.items()):
        if key in {f.name for f in fields(cls)}:
            return name
    if key == "tfidf":
        return "model"
    return None


# ---------------------------------------------------------------------------------- files


def packaged_recipes_dir() -> Path:
    return Path(str(resources.files("clem_icd") / "configs"))


def packaged_recipes() -> dict[str, Path]:
    """Name (e.g. 'codiesp/minilm_cross_desc') → file, for the recipes shipped with the package."""
    root = packaged_recipes_dir()
    return {path.relative_to(root).with_suffix("").as_posix(): path for path in sorted(root.rglob("*.yaml"))}


def resolve_recipe(recipe: str | Path) -> Path:
    path = Path(recipe)
    if path.is_file():
        return path
    name = str(recipe).removesuffix(".yaml").removeprefix("configs/")
    shipped = packaged_recipes()
    if name in shipped:
        return shipped[name]
    raise ClemError(f"recipe '{recipe}': no such file, and not a shipped recipe "
                    f"(`clem-icd recipes` lists them: {', '.join(shipped)})")


def read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A recipe's sections, with `inherit:` resolved (parent first, then this file's keys)."""
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ClemError(f"{path}: cannot read recipe ({exc.__class__.__name__})") from None
    if not isinstance(values, dict):
        raise ClemError(f"{path}: a recipe is a mapping of sections ({', '.join(SECTIONS)})")
    _reject_flat(path, values)
    parent = values.pop("inherit", None)
    if parent is None:
        return values
    parent_path = (Path(path).parent / parent).resolve()
    if parent_path in seen:
        raise ClemError(f"{path}: 'inherit' loops back to {parent_path}")
    merged = read_recipe(parent_path, (*seen, parent_path))
    for section, keys in values.items():
        if not isinstance(keys, dict):
            raise ClemError(f"{path}: section '{section}' must be a mapping of keys to values")
        merged[section] = {**(merged.get(section) or {}), **keys}
    return merged


def _reject_flat(path: Path, values: dict) -> None:
    """Recipes of CLEM-ICD 0.1 were flat (`learning_rate: 5e-5`, `model: clem_icd`): say how to
    move each key to its section instead of failing on the first."""
    stray = [key for key in values if key not in (*SECTIONS, "inherit")]
    if isinstance(values.get("model"), str):
        stray.insert(0, "model")
    if not stray:
        return
    moves = []
    for key in stray:
        if key == "model":
            moves.append(f"model: {values['model']} → model.kind: {values['model']}")
        elif key == "tfidf":
            moves.append("tfidf: {...} → its keys under model: (with kind: tfidf)")
        else:
            home = _section_of(key)
            moves.append(f"{key} → {home}.{key}" if home else f"{key} (unknown key)")
    raise ClemError(f"{path}: this is a flat recipe of CLEM-ICD 0.1; recipes now have sections "
                    f"{', '.join(SECTIONS)} (docs/recipes.md). Move: {'; '.join(moves)}")
