"""Label-wise attention heads: one attention distribution over tokens per code.

Both heads mask padding out of the softmax (the public PLM-ICD code attends to padding, and so
did Edin et al.'s label cross-attention until a January 2026 fix of its mask; that makes a
note's scores depend on what it is batched with) and compute the softmax in float32 with the
maximum subtracted (PLM-ICD runs are known to diverge from overflow there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last (token) axis in float32; padded tokens get exactly zero weight.

    scores: (batch, labels, tokens); mask: (batch, tokens), true for real tokens."""
    scores = scores.float().masked_fill(~mask[:, None, :], float("-inf"))
    scores = scores - scores.amax(dim=-1, keepdim=True)  # softmax does this too; explicit is cheap
    return torch.softmax(scores, dim=-1)


class LAATHead(nn.Module):
    """PLM-ICD / LAAT (Vu et al. 2020): Z = tanh(W1 H); A = softmax_tokens(W2 Z); V = A H;
    logit_l = w3_l · V_l + b_l."""

    def __init__(self, hidden_size: int, num_labels: int, attention_dim: int = 512):
        super().__init__()
        self.first = nn.Linear(hidden_size, attention_dim, bias=False)  # W1
        self.second = nn.Linear(attention_dim, num_labels, bias=False)  # W2: one query per label
        self.output_weight = nn.Parameter(torch.empty(num_labels, hidden_size))  # w3
        self.output_bias = nn.Parameter(torch.zeros(num_labels))
        for weight in (self.first.weight, self.second.weight, self.output_weight):
            nn.init.normal_(weight, std=0.03)

    def attention(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, labels, tokens) attention weights."""
        z = torch.tanh(self.first(hidden))
        return masked_softmax(self.second(z).transpose(1, 2), mask)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.attention(hidden, mask)
        label_states = torch.bmm(weights.to(hidden.dtype), hidden)  # (batch, labels, hidden)
        logits = (label_states * self.output_weight).sum(-1) + self.output_bias
        return logits.float(), weights

    @torch.no_grad()
    def init_from_label_embeddings(self, embeddings: torch.Tensor) -> None:
        """Queries that score tokens by their similarity to the code's description (in the
        tanh(W1 ·) space the queries live in), and output weights along the description."""
        z = torch.tanh(self.first(embeddings))
        self.second.weight.copy_(F.normalize(z, dim=-1) * self.second.weight.norm(dim=-1).mean())
        scale = self.output_weight.norm(dim=-1).mean()
        self.output_weight.copy_(F.normalize(embeddings, dim=-1) * scale)


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

    def attention(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keys = self.key(hidden)  # (batch, tokens, dim)
        scores = torch.einsum("ld,btd->blt", self.queries.to(keys.dtype), keys)
        return masked_softmax(scores / math.sqrt(keys.shape[-1]), mask)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.attention(hidden, mask)
        context = self.norm(torch.bmm(weights.to(hidden.dtype), self.value(hidden)))
        logits = (context * self.output_weight).sum(-1) + self.output_bias
        return logits.float(), weights

    @torch.no_grad()
    def init_from_label_embeddings(self, embeddings: torch.Tensor) -> None:
        """Query_l = key projection of the description, so a label first attends to the tokens
        that resemble its description."""
        keys = self.key(embeddings)
        self.queries.copy_(keys * (math.sqrt(keys.shape[-1]) / keys.norm(dim=-1, keepdim=True).clamp_min(1e-6)))


HEADS = {"laat": LAATHead, "cross": CrossAttentionHead}
