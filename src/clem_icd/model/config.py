"""Configuration of the coder.

`CoderSettings` is the one definition of every model option: a recipe's `model:` section (kind
`clem_icd`) is passed to it as is and validated here, and nowhere else. `ICDCoderConfig` is what a
trained coder's folder stores: the settings plus what training derived from the data (codes,
their systems and descriptions, the text cleaning) and the tuned threshold, so that the coder can
be rebuilt offline from its folder. Adding a model option means adding one field here (and using
it in the model).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from clem_icd.data.text import TEXT_CLEANINGS
from clem_icd.errors import ClemError
from clem_icd.saved import check_keys, stamped

MODEL_TYPE = "clem_icd"
HEAD_KINDS = ("laat", "cross")
LABEL_QUERY_INITS = ("random", "description")
# What label_query_init: description reads: the code's plain description, or the rich one
# (inclusion terms and parent category or PCS section / body system, clem_icd.codes.rich).
DESCRIPTION_TEXTS = ("plain", "rich")
# auto: the fastest exact path for the encoder, device and dtype (clem_icd.longcontext for
# ModernBERT: packed notes and varlen flash attention on CUDA in bf16/fp16, blockwise local
# attention elsewhere); stock: the encoder's own forward as transformers implements it.
ATTENTION_PATHS = ("auto", "stock", "blockwise", "packed")


@dataclass
class CoderSettings:
    encoder: str = "answerdotai/ModernBERT-base"  # hub id, local folder or package://module/folder
    tokenizer: str | None = None  # default: the encoder's
    # A Hugging Face config dict (with model_type): the encoder is randomly initialised from it
    # (tests, benchmarks). A saved coder stores its encoder's full config here to rebuild offline.
    encoder_config: dict | None = None
    head: str = "laat"  # laat (PLM-ICD) | cross (label cross-attention)
    max_length: int = 8192  # tokens per note; longer notes are truncated
    chunk_size: int = 8192  # encoder window; == max_length means no chunking
    attention_dim: int = 512
    label_query_init: str = "random"  # random | description
    description_text: str = "plain"  # plain | rich: the description that label_query_init reads
    attn_implementation: str | None = None  # None: transformers' default for the device (stock path)
    attention: str = "auto"  # auto | stock | blockwise | packed (ModernBERT only), see ATTENTION_PATHS

    def __post_init__(self) -> None:
        if self.head not in HEAD_KINDS:
            raise ClemError(f"head must be one of {', '.join(HEAD_KINDS)}, got '{self.head}'")
        if self.label_query_init not in LABEL_QUERY_INITS:
            raise ClemError(f"label_query_init must be one of {', '.join(LABEL_QUERY_INITS)}, "
                            f"got '{self.label_query_init}'")
        if self.description_text not in DESCRIPTION_TEXTS:
            raise ClemError(f"description_text must be one of {', '.join(DESCRIPTION_TEXTS)}, "
                            f"got '{self.description_text}'")
        if self.attention not in ATTENTION_PATHS:
            raise ClemError(f"attention must be one of {', '.join(ATTENTION_PATHS)}, got '{self.attention}'")
        if self.chunk_size < 1 or self.max_length < 1 or self.attention_dim < 1:
            raise ClemError("max_length, chunk_size and attention_dim must be positive")
        if self.chunk_size > self.max_length:
            self.chunk_size = self.max_length  # a chunk never needs to exceed the note
        self.encoder_config = self.encoder_config or None  # {} reads as "no config": pretrained
        if self.encoder_config is not None and "model_type" not in self.encoder_config:
            raise ClemError("encoder_config needs a 'model_type' (a Hugging Face config dict)")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def settings(self) -> dict:
        """The recipe-level settings only (what a `model:` section may set)."""
        return {name: getattr(self, name) for name in CoderSettings.field_names()}


@dataclass
class ICDCoderConfig(CoderSettings):
    codes: list[str] = field(default_factory=list)  # label order
    threshold: float = 0.5  # tuned on val after training
    code_systems: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    text_cleaning: str = "none"  # none | edin2023: what the training notes went through; applied to new notes
    # How training scored val, the scores `threshold` was tuned on: the autocast precision (fp32,
    # bf16 or fp16) and the batches (notes per forward pass, or a token budget). `clem-icd
    # evaluate` scores so by default, since bf16 rounds by a batch's padded shape: only the same
    # batches in the same precision give training's val metrics back. None: not recorded.
    scored_precision: str | None = None
    scored_batch_size: int | None = None
    scored_max_batch_tokens: int | None = None
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.text_cleaning not in TEXT_CLEANINGS:
            raise ClemError(f"text_cleaning must be one of {', '.join(TEXT_CLEANINGS)}, got '{self.text_cleaning}'")
        if not self.codes:
            raise ClemError("a coder needs at least one code")
        if self.scored_precision not in (None, "fp32", "bf16", "fp16"):
            raise ClemError(f"scored_precision must be fp32, bf16 or fp16, got '{self.scored_precision}'")

    def save(self, path: Path) -> None:
        from clem_icd.atomic import write_json_atomic

        write_json_atomic(stamped(asdict(self)), path)

    @classmethod
    def load(cls, path: Path) -> "ICDCoderConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ClemError(f"{path}: cannot read model config ({exc.__class__.__name__})") from None
        if not isinstance(data, dict) or data.get("model_type") != MODEL_TYPE:
            found = data.get("model_type") if isinstance(data, dict) else None
            raise ClemError(f"{path}: not a CLEM-ICD coder (model_type {found!r})")
        known = [f.name for f in fields(cls)]
        check_keys(path, data, known)
        return cls(**{k: v for k, v in data.items() if k in known})
