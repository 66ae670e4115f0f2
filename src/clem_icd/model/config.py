"""Configuration of a trained coder: everything needed to rebuild it offline from its folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from clem_icd.errors import ClemError

MODEL_TYPE = "clem_icd"
TEXT_CLEANINGS = ("none", "edin2023")


@dataclass
class ICDCoderConfig:
    encoder: str  # hub id or local folder the encoder (and tokenizer) came from
    codes: list[str]  # label order
    head: str = "laat"  # laat (PLM-ICD) | cross (label cross-attention)
    max_length: int = 8192  # tokens per note; longer notes are truncated
    chunk_size: int = 8192  # encoder window; == max_length means no chunking
    attention_dim: int = 512
    label_query_init: str = "random"  # random | description
    threshold: float = 0.5  # tuned on val after training
    code_systems: list[str] = field(default_factory=list)
    descriptions: list[str] = field(default_factory=list)
    encoder_config: dict = field(default_factory=dict)  # the encoder's HF config, to rebuild offline
    attn_implementation: str | None = None  # None: transformers' default for the device
    text_cleaning: str = "none"  # none | edin2023: what the training notes went through; applied to new notes
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        if self.head not in ("laat", "cross"):
            raise ClemError(f"head must be 'laat' or 'cross', got '{self.head}'")
        if self.label_query_init not in ("random", "description"):
            raise ClemError(f"label_query_init must be 'random' or 'description', got '{self.label_query_init}'")
        if self.text_cleaning not in TEXT_CLEANINGS:
            raise ClemError(f"text_cleaning must be one of {', '.join(TEXT_CLEANINGS)}, got '{self.text_cleaning}'")
        if self.chunk_size < 1 or self.max_length < 1:
            raise ClemError("max_length and chunk_size must be positive")
        if self.chunk_size > self.max_length:
            self.chunk_size = self.max_length  # a chunk never needs to exceed the note
        if not self.codes:
            raise ClemError("a coder needs at least one code")

    def save(self, path: Path) -> None:
        from clem_icd.atomic import write_json_atomic

        write_json_atomic(asdict(self), path)

    @classmethod
    def load(cls, path: Path) -> "ICDCoderConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ClemError(f"{path}: cannot read model config ({exc.__class__.__name__})") from None
        if data.get("model_type") != MODEL_TYPE:
            raise ClemError(f"{path}: not a CLEM-ICD coder (model_type {data.get('model_type')!r})")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
