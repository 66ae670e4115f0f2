"""ModernBERT's forward pass with exact, cheap attention, on the stock model's own weights.

transformers' ModernBERT without flash-attn builds a dense (batch, 1, tokens, tokens)
sliding-window mask and runs full quadratic attention in every layer, although two of every
three layers only look 64 tokens either way. This forward runs the same layers (the stock
modules: embeddings, norms, Wqkv, Wo, MLP, rotary tables) and replaces only the attention; each
layer is still called as a module (its forward replaced on the layer object, _LayerForward), so
hooks around layers, FSDP's per-layer weight gathering among them, work as on the stock forward:

- `blockwise`: the batch padded to its longest note, rounded up to the block size; local
  layers blockwise (attention.blockwise_local_attention), global layers SDPA with a key mask.
- `packed`: padding removed once; the notes of a batch run as one packed sequence with
  per-note positions and cu_seqlens; local and global layers through packed_attention (CUDA
  fp16/bf16: PyTorch's varlen flash attention, window (64, 64) on local layers); states are put
  back into the padded layout at the end. What `auto` picks: choose_mode.

Both equal the stock model on every real token (tests/test_longcontext.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from clem_icd.longcontext.attention import (
    BLOCK,
    PADDING_SEGMENT,
    band_mask,
    blockwise_local_attention,
    global_attention,
    packed_attention,
    packed_segments,
    runs_varlen,
)

MODES = ("auto", "blockwise", "packed")


def is_modernbert(model: nn.Module) -> bool:
    """A transformers ModernBertModel laid out as this forward expects (transformers >= 5:
    per-layer-type rotary tables, `layer_types`, `attention_type` on each layer)."""
    config = getattr(model, "config", None)
    return (getattr(config, "model_type", None) == "modernbert" and hasattr(model, "rotary_emb")
            and hasattr(config, "layer_types") and all(hasattr(layer, "attention_type") for layer in model.layers))


def choose_mode(model: nn.Module, requested: str = "auto") -> str:
    """`auto`: packed (no padding work at all; varlen flash attention on CUDA in fp16/bf16, the
    exact reference kernels elsewhere), which measured as fast as blockwise on one note and 1.5x
    faster on a mixed-length batch on CPU (docs/PERFORMANCE.md); blockwise when attention
    dropout is on in training, which the varlen kernel does not do."""
    dropout = model.training and getattr(model.config, "attention_dropout", 0.0) > 0
    if requested == "packed" and dropout:
        raise ValueError("attention 'packed' does not apply attention dropout: use 'blockwise' or 'auto'")
    if requested != "auto":
        return requested
    return "blockwise" if dropout else "packed"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on (..., tokens, heads, dim) with cos/sin (..., tokens, dim), in float32 and cast
    back, as the stock model does (so results match it bit for bit in fp32)."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return ((x.float() * cos) + (_rotate_half(x.float()) * sin)).to(x.dtype)


class _Attention:
    """What one forward needs to run attention in its layout; the local layers' band mask is
    built once, on first use, and shared by all of them."""

    def __init__(self, mode: str, window: int, *, segments=None, key_valid=None, cu_seqlens=None, max_seqlen=0):
        self.mode, self.window = mode, window
        self.segments, self.key_valid = segments, key_valid
        self.cu_seqlens, self.max_seqlen = cu_seqlens, max_seqlen
        self.band = None

    def _band(self) -> torch.Tensor:
        if self.band is None:
            if self.segments is None:
                self.segments = packed_segments(self.cu_seqlens)
            self.band = band_mask(self.segments, self.window, BLOCK)
        return self.band

    def __call__(self, q, k, v, local: bool, scale: float, dropout: float) -> torch.Tensor:
        if self.mode == "packed":  # (1, total, heads, dim)
            band = self._band() if local and not runs_varlen(q) else None
            out = packed_attention(q[0], k[0], v[0], self.cu_seqlens, self.max_seqlen,
                                   self.window if local else None, scale, self.segments, band)
            return out[None]
        if local:
            return blockwise_local_attention(q, k, v, self.segments, self.window, BLOCK, scale, dropout, self._band())
        return global_attention(q, k, v, self.key_valid, scale, dropout)


def _layer_forward(layer: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   attend: _Attention) -> torch.Tensor:
    attn = layer.attn
    batch, tokens, _ = hidden.shape
    heads = attn.config.num_attention_heads
    qkv = attn.Wqkv(layer.attn_norm(hidden)).view(batch, tokens, 3, heads, attn.head_dim)
    q, k, v = qkv.unbind(dim=2)  # (batch, tokens, heads, dim)
    q, k = _rotary(q, cos, sin), _rotary(k, cos, sin)
    dropout = attn.attention_dropout if attn.training else 0.0
    local = attn.sliding_window is not None
    out = attend(q, k, v, local, attn.head_dim ** -0.5, dropout)
    hidden = hidden + attn.out_drop(attn.Wo(out.reshape(batch, tokens, -1)))
    return hidden + layer.mlp(layer.mlp_norm(hidden))


class _LayerForward:
    """Installed as a ModernBERT layer's `forward` (an attribute of the layer object; the class
    is untouched), so that the fast path runs each layer through the layer module's own call,
    `layer(hidden, cos, sin, attend)`: hooks on the layer run around it as around the stock
    forward, among them FSDP's, which gather a wrapped layer's sharded weights before it runs and
    free them after. Any other call (the stock model's own forward) goes to the stock forward."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def __call__(self, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        layer = self.layer
        if not (len(args) == 3 and isinstance(args[2], _Attention) and not kwargs):
            return type(layer).forward(layer, hidden, *args, **kwargs)
        cos, sin, attend = args
        if getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled():
            # The layer's activations are recomputed in backward, as the stock layer does when
            # activation_checkpointing_enable() (formerly gradient_checkpointing_enable) was called;
            # inside the module call, as there, so that hooks on the layer run once.
            return checkpoint(_layer_forward, layer, hidden, cos, sin, attend, use_reentrant=False)
        return _layer_forward(layer, hidden, cos, sin, attend)


def _install_layer_forwards(model: nn.Module) -> None:
    """_LayerForward on every encoder layer of `model` that lacks it. The layers are found inside
    whatever wraps them (FSDP 1 puts a module around each wrapped layer; FSDP 2 changes the
    layer's class to a subclass of its own)."""
    from transformers.models.modernbert.modeling_modernbert import ModernBertEncoderLayer

    for module in model.layers.modules():
        if isinstance(module, ModernBertEncoderLayer) and not isinstance(vars(module).get("forward"), _LayerForward):
            module.forward = _LayerForward(module)


def _run_layers(model: nn.Module, hidden: torch.Tensor, position_ids: torch.Tensor, attend: _Attention) -> torch.Tensor:
    rotary = {kind: model.rotary_emb(hidden, position_ids, kind) for kind in set(model.config.layer_types)}
    _install_layer_forwards(model)
    for layer in model.layers:
        cos, sin = rotary[layer.attention_type]
        hidden = layer(hidden, cos, sin, attend)  # _LayerForward, through the module's call
    return model.final_norm(hidden)


def modernbert_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       mode: str = "auto"):
    """The stock `ModernBertModel.forward(input_ids, attention_mask).last_hidden_state` on
    every real token, computed without padding work. Right-padded inputs (real tokens first,
    as tokenizers and clem_icd.batching produce them)."""
    from transformers.modeling_outputs import BaseModelOutput

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    batch, tokens = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    valid = attention_mask.bool()
    window = model.config.sliding_window  # half-window: |i - j| <= window
    if choose_mode(model, mode) == "packed":
        return BaseModelOutput(last_hidden_state=_packed_forward(model, input_ids, valid, window))

    # The embeddings run on the input as given, so a hook on them (gradient explanations) sees
    # the caller's (batch, tokens) layout; the block padding after them is zeros, which no real
    # token ever attends to.
    hidden = model.embeddings(input_ids=input_ids)
    padded = -(-tokens // BLOCK) * BLOCK
    if padded != tokens:
        hidden = nn.functional.pad(hidden, (0, 0, 0, padded - tokens))
        valid = nn.functional.pad(valid, (0, padded - tokens), value=False)
    segments = torch.where(valid, 0, PADDING_SEGMENT)
    attend = _Attention("blockwise", window, segments=segments, key_valid=None if bool(valid.all()) else valid)
    position_ids = torch.arange(padded, device=input_ids.device)[None]
    return BaseModelOutput(last_hidden_state=_run_layers(model, hidden, position_ids, attend)[:, :tokens])


def _packed_forward(model: nn.Module, input_ids: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    batch, tokens = input_ids.shape
    lengths = valid.sum(dim=1)
    where = valid.flatten().nonzero().squeeze(1)  # positions of real tokens in the padded layout
    cu_seqlens = nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    positions = (valid.long().cumsum(dim=1) - 1).flatten()[where]  # each note counts from 0
    attend = _Attention("packed", window, cu_seqlens=cu_seqlens, max_seqlen=int(lengths.max()))
    # Embedded in the padded layout (see above), then packed: (1, total, hidden).
    hidden = model.embeddings(input_ids=input_ids).flatten(0, 1)[where][None]
    hidden = _run_layers(model, hidden, positions[None], attend)[0]
    out = hidden.new_zeros(batch * tokens, hidden.shape[-1]).index_copy(0, where, hidden)
    return out.view(batch, tokens, -1)


class AcceleratedModernBert(nn.Module):
    """A ModernBertModel behind the fast forward; `forward(input_ids, attention_mask)` returns
    an output with `last_hidden_state`, like the model's own."""

    def __init__(self, model: nn.Module, mode: str = "auto"):
        super().__init__()
        if not is_modernbert(model):
            raise ValueError(f"accelerate_modernbert needs a ModernBertModel, got {type(model).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.model, self.mode = model, mode
        self.config = model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return modernbert_forward(self.model, input_ids, attention_mask, self.mode)


def accelerate_modernbert(model: nn.Module, mode: str = "auto") -> AcceleratedModernBert:
    """The fast exact forward of a transformers `ModernBertModel` (its weights shared, not
    copied): outputs equal the stock model's on every non-padded token."""
    return AcceleratedModernBert(model, mode)
