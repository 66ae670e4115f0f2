"""Token attributions for chosen codes: which input tokens drove each code's score.

- `attention`: the head's label-wise attention over tokens (PLM-ICD / LAAT, cross-attention).
- `inputxgrad`: ‖x_t ⊙ ∂logit_c/∂x_t‖₂, x_t the encoder's embedding output for token t (word
  and position embeddings after their layer norm), as in Edin et al. (2024).
- `attingrad`: the attention weight times inputxgrad (Edin et al. 2024, "AttInGrad", their best
  unsupervised method on MDACE).

Gradients: one backward pass per rank k of the chosen codes, summing the k-th code's logit over
the notes of the batch (notes do not interact, so each note receives its own gradient).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from clem_icd.errors import ClemError

EXPLAIN_METHODS = ("attention", "attingrad", "inputxgrad")


def _embedding_module(encoder: nn.Module) -> nn.Module:
    # BERT, RoBERTa, ModernBERT, DeBERTa: `embeddings`; others: their input embedding table.
    module = getattr(encoder, "embeddings", None)
    return module if isinstance(module, nn.Module) else encoder.get_input_embeddings()


def _tokens_of_chunks(values: list[torch.Tensor], calls: list, mask: torch.Tensor) -> torch.Tensor:
    """Per encoder call, (chunks, width) values → (batch, tokens) in the layout of `mask`,
    undoing the coder's chunking (`calls` = coder.chunks(mask): which token each position was)."""
    batch, length = mask.shape
    out = values[0].new_zeros(batch * length)
    for call_values, (rows, columns, real) in zip(values, calls, strict=True):
        if call_values.shape != real.shape:
            # flash-attention encoders may drop padding before the embeddings.
            raise ClemError(f"gradient explanations need the encoder's embeddings in padded form, got shape "
                            f"{tuple(call_values.shape)}: load the model with attn_implementation 'sdpa' or 'eager'")
        out[(rows * length + columns)[real]] = call_values[real]
    return out.view(batch, length)


def token_attributions(coder, input_ids: torch.Tensor, mask: torch.Tensor, method: str,
                       choose: Callable[[int, np.ndarray], list[int]]
                       ) -> tuple[np.ndarray, list[dict[int, np.ndarray]]]:
    """Logits (batch, codes) and, per note, {code: attribution of every input position}.
    `choose(row, logits_row)` says which codes of a note to explain."""
    if method not in EXPLAIN_METHODS:
        raise ValueError(f"unknown explanation method {method!r}")
    if method == "attention":
        with torch.inference_mode():
            logits, attention = coder(input_ids, mask, return_attention=True)
        logits = logits.float().cpu().numpy()
        chosen = [choose(b, logits[b]) for b in range(len(logits))]
        results = []
        for b, codes in enumerate(chosen):  # one device-to-host copy per note
            rows = attention[b, codes, : mask.shape[1]].float().cpu().numpy()
            results.append(dict(zip(codes, rows)))
        return logits, results

    captured: list[torch.Tensor] = []
    handle = _embedding_module(coder.encoder).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.enable_grad():
            logits_t, attention = coder(input_ids, mask, return_attention=True)
    finally:
        handle.remove()
    calls = coder.chunks(mask)  # the encoder calls, once for every rank below
    if len(captured) != len(calls):
        raise ClemError(f"gradient explanations: the encoder embedded {len(captured)} times for "
                        f"{len(calls)} chunk groups")
    logits = logits_t.detach().float().cpu().numpy()
    chosen = [choose(b, logits[b]) for b in range(len(logits))]
    results: list[dict[int, np.ndarray]] = [{} for _ in chosen]
    depth = max((len(c) for c in chosen), default=0)
    for k in range(depth):
        rows = [b for b, codes in enumerate(chosen) if len(codes) > k]
        target = logits_t[rows, [chosen[b][k] for b in rows]].sum()
        gradients = torch.autograd.grad(target, captured, retain_graph=k < depth - 1)
        per_token = _tokens_of_chunks([(x.detach().float() * g.float()).norm(dim=-1)
                                       for x, g in zip(captured, gradients)], calls, mask)
        for b in rows:
            code = chosen[b][k]
            scores = per_token[b]
            if method == "attingrad":
                scores = scores * attention[b, code, : mask.shape[1]].detach().float()
            results[b][code] = scores.cpu().numpy()
    return logits, results
