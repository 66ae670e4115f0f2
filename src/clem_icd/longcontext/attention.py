"""Exact attention kernels for long notes: banded (local) attention computed blockwise, full
(global) attention with at most a key mask, and both over packed (unpadded) notes.

Two layouts:
- padded: q, k, v (batch, tokens, heads, dim), tokens a multiple of the block size, with a
  `segments` tensor (batch, tokens) naming the note each token belongs to;
- packed: the notes of a batch one after another in one sequence (batch 1), delimited by
  `cu_seqlens` (int32, notes + 1), as flash attention's varlen kernels take them.

Local attention lets token i see token j of the same note when |i - j| <= window (ModernBERT:
window 64, both sides inclusive, as transformers' sliding-window mask and flash attention's
window_size=(64, 64) define it). Computed blockwise, each query block of `block` tokens meets
only the block + 2 * window keys around it: one batched SDPA call with a fixed band mask, so the
cost grows linearly with the note instead of quadratically.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

PADDING_SEGMENT = -1
# Query block of the banded kernel. 64 was fastest on CPU at 8,192 tokens with a 64 half-window
# (keys per query block: 64 + 2 x 64 = 192; block 128: 256 keys, 2.1x slower; 256: 2.8x).
BLOCK = 64


def band_mask(segments: torch.Tensor, window: int, block: int) -> torch.Tensor:
    """(batch x blocks, 1, block, block + 2 * window) bool: which of the keys around each query
    block a query may see (|i - j| <= window, same segment). The same for every local layer of a
    forward, so it is built once (blockwise_local_attention's `mask`)."""
    batch, tokens = segments.shape
    blocks, span = tokens // block, block + 2 * window
    key_segments = F.pad(segments, (window, window), value=PADDING_SEGMENT - 1).unfold(1, span, block)
    query_segments = segments.view(batch, blocks, block)
    # Query i of a block sits at key offset i + window: the band is 0 <= offset - i <= 2 * window.
    offsets = torch.arange(span, device=segments.device)[None, :] - torch.arange(block, device=segments.device)[:, None]
    band = (offsets >= 0) & (offsets <= 2 * window)
    mask = band & (query_segments[..., :, None] == key_segments[..., None, :])  # (batch, blocks, block, span)
    return mask.reshape(batch * blocks, 1, block, span)


def blockwise_local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: torch.Tensor,
                              window: int, block: int, scale: float, dropout: float = 0.0,
                              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Banded attention, exact: token i attends to token j iff |i - j| <= window and both
    belong to the same segment. q, k, v: (batch, tokens, heads, dim) with tokens a multiple of
    `block`; segments: (batch, tokens) int, PADDING_SEGMENT for padding; `mask`: band_mask of
    them, when the caller already has it. Returns (batch, tokens, heads, dim).

    Padding tokens form their own segment, so every query row keeps at least its own key and no
    row is fully masked (a fully masked softmax row is NaN); their outputs are finite and
    meaningless, and never reach a real token's row."""
    batch, tokens, heads, dim = q.shape
    if tokens % block:
        raise ValueError(f"tokens ({tokens}) must be a multiple of the block size ({block})")
    blocks, span = tokens // block, block + 2 * window

    # Keys and values around each query block: pad `window` on both sides, then take
    # overlapping windows of `span` positions every `block` (a view; the reshape copies once).
    def around(x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (0, 0, 0, 0, window, window))  # (batch, tokens + 2w, heads, dim)
        windows = padded.unfold(1, span, block)  # (batch, blocks, heads, dim, span)
        return windows.permute(0, 1, 2, 4, 3).reshape(batch * blocks, heads, span, dim)

    queries = q.view(batch, blocks, block, heads, dim).transpose(2, 3).reshape(batch * blocks, heads, block, dim)
    if mask is None:
        mask = band_mask(segments, window, block)
    out = F.scaled_dot_product_attention(queries, around(k), around(v), attn_mask=mask, dropout_p=dropout, scale=scale)
    return out.view(batch, blocks, heads, block, dim).transpose(2, 3).reshape(batch, tokens, heads, dim)


def global_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None,
                     scale: float, dropout: float = 0.0) -> torch.Tensor:
    """Full attention over each note's real tokens. q, k, v: (batch, tokens, heads, dim);
    key_valid: (batch, tokens) bool or None when nothing is padded. The mask is (batch, 1, 1,
    tokens), never (tokens x tokens). Padding queries see the real keys: finite."""
    mask = None if key_valid is None else key_valid[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, dropout_p=dropout, scale=scale)
    return out.transpose(1, 2)


@functools.cache
def varlen_kernel():
    """PyTorch's varlen flash attention when this build has it with sliding windows (the
    `window_size` argument; torch 2.13 has it), else None: the exact reference runs instead."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn if "window_size" in inspect.signature(varlen_attn).parameters else None


def runs_varlen(q: torch.Tensor) -> bool:
    """Whether packed_attention runs the varlen flash kernel for these queries (else the
    reference kernels)."""
    return varlen_kernel() is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def packed_segments(cu_seqlens: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """(1, total rounded up to block) segment ids of packed notes: note n's tokens are n, the
    rounding is PADDING_SEGMENT."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    total = int(cu_seqlens[-1])
    notes = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths)
    return F.pad(notes, (0, -(-total // block) * block - total), value=PADDING_SEGMENT)[None]


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                     window: int | None, scale: float, segments: torch.Tensor | None = None,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention over packed notes: q, k, v (total_tokens, heads, dim), note n spanning
    cu_seqlens[n]:cu_seqlens[n + 1]; window None for full attention. On CUDA in fp16/bf16 this
    is PyTorch's varlen flash attention; elsewhere exact reference kernels: full attention one
    note at a time (no mask at all), local attention blockwise over the packed sequence with
    each note its own segment (`segments` = packed_segments and `mask` = its band_mask when
    the caller keeps them for all layers)."""
    if runs_varlen(q):
        return varlen_kernel()(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale,
                      window_size=(window, window) if window is not None else (-1, -1))
    if window is None:
        bounds = cu_seqlens.tolist()
        return torch.cat([global_attention(q[None, a:b], k[None, a:b], v[None, a:b], None, scale)[0]
                          for a, b in zip(bounds[:-1], bounds[1:])])
    segments = packed_segments(cu_seqlens) if segments is None else segments
    total, padded = q.shape[0], segments.shape[1]
    pad = (0, 0, 0, 0, 0, padded - total)
    out = blockwise_local_attention(F.pad(q, pad)[None], F.pad(k, pad)[None], F.pad(v, pad)[None],
                                    segments, window, BLOCK, scale, mask=mask)
    return out[0, :total]
