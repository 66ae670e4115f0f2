"""Label-wise attention heads: one attention distribution over tokens per code.

Both heads mask padding out of the softmax (the public PLM-ICD code attends to padding, and so
did Edin et al.'s label cross-attention until a January 2026 fix of its mask; that makes a
note's scores depend on what it is batched with) and compute the softmax in float32 with the
maximum subtracted (PLM-ICD runs are known to diverge from overflow there).

Memory. The attention weights are a (batch, labels, tokens) tensor: 65M numbers per note at
MIMIC-IV scale (7,942 codes x 8,192 tokens), 260 MB in float32, and computing them all at once
under autograd keeps several such tensors per note until backward. Both heads therefore run
their attention through `label_attention`, which goes through the labels a chunk at a time
(CHUNK_ELEMENTS) and keeps for backward only its inputs (queries, keys, values, mask): backward
recomputes each chunk's weights from them (one extra scores matmul per chunk), so no
(batch, labels, tokens) tensor outlives its chunk. The full weights are only materialised when
asked for (`need_weights`, for the evidence methods), and then as a plain float32 tensor outside
the autograd graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# Labels per chunk: as many as keep one (batch, chunk labels, tokens) tensor within
# CHUNK_ELEMENTS numbers. 2**23 is 32 MB in float32; forward holds one or two chunk-sized
# tensors at a time and backward two or three (a few more bf16 copies under autocast), so the
# attention's transient memory stays around 100 MB however many codes and notes there are,
# while one note's chunk (1,024 labels x 8,192 tokens) is still a matmul large enough to keep
# a GPU busy.
CHUNK_ELEMENTS = 2**23


def _at_least_float32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # float64 stays float64 (gradcheck)


def _masked_softmax_(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """masked_softmax on a float tensor the caller owns, in place (no chunk-sized copies)."""
    scores.masked_fill_(~mask[:, None, :], float("-inf"))
    scores.sub_(scores.amax(dim=-1, keepdim=True))  # exp(-inf) is exactly 0: padding gets 0
    scores.exp_()
    return scores.div_(scores.sum(dim=-1, keepdim=True))


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last (token) axis in float32 (float64 for float64 scores); padded
    tokens get exactly zero weight.

    scores: (batch, labels, tokens); mask: (batch, tokens), true for real tokens."""
    return _masked_softmax_(scores.to(_at_least_float32(scores.dtype), copy=True), mask)


def _chunk_weights(queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """(batch, labels, tokens) = masked softmax of queries · keys / temperature, in float32
    (float64 for float64 keys); queries (labels, dim), keys (batch, tokens, dim), multiplied in
    their own dtype, the product divided by the temperature after the cast to float32."""
    scores = torch.matmul(queries, keys.transpose(1, 2))
    scores = scores.to(_at_least_float32(scores.dtype))  # a fresh tensor either way: ours to modify
    if temperature != 1.0:
        scores.div_(temperature)
    return _masked_softmax_(scores, mask)


def _labels_per_chunk(batch: int, tokens: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, batch * tokens))


class _LabelAttention(torch.autograd.Function):
    """context (batch, labels, dv) = A @ values, A = masked softmax over tokens of
    queries (labels, d) · keys (batch, tokens, d) / temperature; A in float32, cast to the
    values' dtype for the product. Forward and backward go through the labels a chunk at a
    time; only the inputs are saved, and backward recomputes each chunk of A from them."""

    @staticmethod
    def forward(ctx, queries, keys, values, mask, temperature, chunk_elements, need_weights):
        batch, tokens, _ = keys.shape
        labels = queries.shape[0]
        step = _labels_per_chunk(batch, tokens, chunk_elements)
        context = values.new_empty(batch, labels, values.shape[-1])
        weights = keys.new_empty((batch, labels, tokens) if need_weights else (0,),
                                 dtype=_at_least_float32(keys.dtype))
        with torch.autocast(keys.device.type, enabled=False):  # the dtypes were chosen by the caller
            for start in range(0, labels, step):
                chunk = _chunk_weights(queries[start:start + step], keys, mask, temperature)
                if need_weights:
                    weights[:, start:start + step] = chunk
                context[:, start:start + step] = torch.bmm(chunk.to(values.dtype), values)
                del chunk  # before the next chunk's scores exist, not after
        ctx.save_for_backward(queries, keys, values, mask)
        ctx.temperature, ctx.step = temperature, step
        ctx.mark_non_differentiable(weights)
        ctx.set_materialize_grads(False)  # else backward gets a (batch, labels, tokens) zero tensor for the weights
        return context, weights

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_context, _grad_weights):
        # With A = softmax(S), C = A V and G = dL/dC, per chunk of labels:
        #   dV += A^T G;   dA = G V^T;   dS = A * (dA - rowsum(A * dA)) / temperature;
        #   dQ = sum over the batch of dS K;   dK += dS^T Q.
        # dS is exactly zero at padding, where A is. dK and dV add up over chunks in float32.
        queries, keys, values, mask = ctx.saved_tensors
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        if grad_context is None:  # the context was not used
            return None, None, None, None, None, None, None
        grad_q = torch.zeros_like(queries) if need_q else None
        grad_k = torch.zeros_like(keys, dtype=_at_least_float32(keys.dtype)) if need_k else None
        grad_v = torch.zeros_like(values, dtype=_at_least_float32(values.dtype)) if need_v else None
        grad_context = grad_context.to(values.dtype)
        with torch.autocast(keys.device.type, enabled=False):
            for start in range(0, queries.shape[0], ctx.step):
                q = queries[start:start + ctx.step]
                g = grad_context[:, start:start + ctx.step]
                a = _chunk_weights(q, keys, mask, ctx.temperature)
                if need_v:
                    grad_v += torch.bmm(a.to(values.dtype).transpose(1, 2), g)
                if need_q or need_k:
                    ds = torch.bmm(g, values.transpose(1, 2)).to(a.dtype)
                    ds.mul_(a)
                    ds.addcmul_(a, ds.sum(dim=-1, keepdim=True), value=-1)  # A*dA - A*rowsum(A*dA)
                    if ctx.temperature != 1.0:
                        ds.div_(ctx.temperature)
                    a = None
                    ds = ds.to(keys.dtype)
                    if need_q:
                        grad_q[start:start + ctx.step] = torch.bmm(ds, keys).sum(dim=0)
                    if need_k:
                        grad_k += torch.matmul(ds.transpose(1, 2), q)
                a = ds = None  # before the next chunk's are computed
        return (grad_q, None if grad_k is None else grad_k.to(keys.dtype),
                None if grad_v is None else grad_v.to(values.dtype), None, None, None, None)


def label_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                    temperature: float = 1.0, chunk_elements: int = CHUNK_ELEMENTS,
                    need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each label's attention-weighted sum of the values: (context (batch, labels, dv), weights).

    queries (labels, d), keys (batch, tokens, d), values (batch, tokens, dv), mask (batch, tokens)
    true for real tokens. The weights, A = softmax over real tokens of queries · keys /
    temperature in float32, are (batch, labels, tokens) float32 and outside the autograd graph
    when need_weights, else None. Memory: see the module notes and _LabelAttention."""
    context, weights = _LabelAttention.apply(queries, keys, values, mask, float(temperature),
                                             chunk_elements, need_weights)
    return context, (weights if need_weights else None)


def _matmul_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the attention's matmuls run in: autocast's where it is on (what nn.Linear and
    torch.bmm would use), else the token states'."""
    device = hidden.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype


class LAATHead(nn.Module):
    """PLM-ICD / LAAT (Vu et al. 2020): Z = tanh(W1 H); A = softmax_tokens(W2 Z); V = A H;
    logit_l = w3_l · V_l + b_l."""

    # The parameters with one row per label, in label order (a model extended with new codes
    # keeps these rows of its old codes, clem_icd.training.init_from); the others are shared.
    label_parameters = ("second.weight", "output_weight", "output_bias")

    def __init__(self, hidden_size: int, num_labels: int, attention_dim: int = 512):
        super().__init__()
        self.first = nn.Linear(hidden_size, attention_dim, bias=False)  # W1
        self.second = nn.Linear(attention_dim, num_labels, bias=False)  # W2: one query per label
        self.output_weight = nn.Parameter(torch.empty(num_labels, hidden_size))  # w3
        self.output_bias = nn.Parameter(torch.zeros(num_labels))
        for weight in (self.first.weight, self.second.weight, self.output_weight):
            nn.init.normal_(weight, std=0.03)
        self.chunk_elements = CHUNK_ELEMENTS  # size of the attention's label chunks (tests shrink it)

    def attention(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, labels, tokens) attention weights."""
        return self(hidden, mask, need_weights=True)[1]

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor,
                need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """float32 logits (batch, labels) and the float32 attention weights (batch, labels,
        tokens), outside the autograd graph; None for them with need_weights=False, which
        training and plain prediction should pass: the weights are 260 MB per note at
        7,942 codes x 8,192 tokens."""
        dtype = _matmul_dtype(hidden)
        z = torch.tanh(self.first(hidden))
        label_states, weights = label_attention(  # (batch, labels, hidden)
            self.second.weight.to(dtype), z.to(dtype), hidden.to(dtype), mask,
            chunk_elements=self.chunk_elements, need_weights=need_weights)
        logits = (label_states * self.output_weight).sum(-1) + self.output_bias
        return logits.float(), weights

    @torch.no_grad()
    def init_from_label_embeddings(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Queries that score tokens by their similarity to the code's description (in the
        tanh(W1 ·) space the queries live in), and output weights along the description.
        `labels`: the rows `embeddings` are for (default: all); the others are left alone. The
        rows keep the mean norm they had (their random initialisation's)."""
        rows = slice(None) if labels is None else labels
        z = torch.tanh(self.first(embeddings))
        self.second.weight[rows] = F.normalize(z, dim=-1) * self.second.weight[rows].norm(dim=-1).mean()
        scale = self.output_weight[rows].norm(dim=-1).mean()
        self.output_weight[rows] = F.normalize(embeddings, dim=-1) * scale


class CrossAttentionHead(nn.Module):
    """Label cross-attention after Edin et al. (2024, "An unsupervised approach to achieve
    supervised-level explainability in healthcare records"; their `LabelCrossAttention` in
    github.com/JoakimEdin/explainable-medical-coding, models/modules/attention.py), with the
    per-label read-out of PLM-ICD / LAAT instead of theirs.

    With H the (tokens x hidden) token states and d = `attention_dim`:
        K = H W_k, V = H W_v (d-dimensional, no biases);
        A_l = softmax over the note's real tokens of q_l . K_t / sqrt(d);
        c_l = LayerNorm(sum_t A_lt V_t);   logit_l = w_l . c_l + b_l.

    As in Edin et al.: one learned query q_l per label, keys and values are linear projections
    of H, softmax over tokens, layer norm (with affine) of each label's context, then a linear
    read-out; queries and output weights start as N(0, 0.03).

    Where it departs, and why:
    - Output: per-label weights w_l and bias b_l (labels x d + labels parameters). Theirs is one
      `Linear(hidden, 1)` shared by all labels (logit_l = w . c_l + b), so everything
      label-specific sits in the query. We keep LAAT's per-label read-out (w3_l . V_l + b_l) so
      that `laat` and `cross` differ only in how attention is computed, and so that every code
      has its own bias (its base rate), which one shared scalar cannot give. Cost: labels x d
      parameters (4M for 7,942 codes at d = 512).
    - Scaling: scores are divided by sqrt(d), standard scaled dot-product attention, so their
      spread does not grow with d; theirs are divided by `scale`, 1 in their configs
      (unscaled). `init_from_label_embeddings` relies on it: queries of norm sqrt(d) give scores
      |K_t| cos(q_l, K_t).
    - Width: keys, values and queries have `attention_dim` (default 512) dimensions, where theirs
      keep the encoder's hidden size, so the head does not grow with the encoder (1,024 for
      ModernBERT-large). W_v has no bias (theirs has one; since each A_l sums to 1, it only
      adds one shared vector to every context). W_k and W_v keep PyTorch's default init (theirs:
      N(0, 0.03)).
    - Padding gets exactly zero weight and the softmax runs in float32 (see the module notes);
      optional query initialisation from code descriptions.
    None of these departures has been ablated against Edin et al.'s exact head in this project
    (docs/results.md has no such run): they are design choices, not measured improvements."""

    label_parameters = ("queries", "output_weight", "output_bias")  # as LAATHead's

    def __init__(self, hidden_size: int, num_labels: int, attention_dim: int = 512):
        super().__init__()
        self.queries = nn.Parameter(torch.empty(num_labels, attention_dim))
        self.key = nn.Linear(hidden_size, attention_dim, bias=False)
        self.value = nn.Linear(hidden_size, attention_dim, bias=False)
        self.norm = nn.LayerNorm(attention_dim)
        self.output_weight = nn.Parameter(torch.empty(num_labels, attention_dim))
        self.output_bias = nn.Parameter(torch.zeros(num_labels))
        for weight in (self.queries, self.output_weight):
            nn.init.normal_(weight, std=0.03)
        self.chunk_elements = CHUNK_ELEMENTS

    def attention(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, labels, tokens) attention weights."""
        return self(hidden, mask, need_weights=True)[1]

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor,
                need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As LAATHead.forward."""
        dtype = _matmul_dtype(hidden)
        keys = self.key(hidden)  # (batch, tokens, dim)
        context, weights = label_attention(
            self.queries.to(dtype), keys.to(dtype), self.value(hidden).to(dtype), mask,
            temperature=math.sqrt(keys.shape[-1]), chunk_elements=self.chunk_elements, need_weights=need_weights)
        logits = (self.norm(context) * self.output_weight).sum(-1) + self.output_bias
        return logits.float(), weights

    @torch.no_grad()
    def init_from_label_embeddings(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """Query_l = key projection of the description, so a label first attends to the tokens
        that resemble its description. `labels`: as LAATHead's."""
        keys = self.key(embeddings)
        rows = slice(None) if labels is None else labels
        self.queries[rows] = keys * (math.sqrt(keys.shape[-1]) / keys.norm(dim=-1, keepdim=True).clamp_min(1e-6))


HEADS = {"laat": LAATHead, "cross": CrossAttentionHead}
