"""The label-wise attention heads, computed a chunk of labels at a time with backward
recomputing the weights, equal their plain formulas (all labels at once, float64)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from clem_icd.model.heads import HEADS, label_attention

BATCH, TOKENS, HIDDEN, DIM, LABELS = 3, 11, 8, 6, 7
LENGTHS = [11, 7, 3]  # real tokens per note; the rest is padding


def _mask(lengths=LENGTHS, tokens=TOKENS):
    return torch.arange(tokens)[None, :] < torch.tensor(lengths)[:, None]


def _head(kind, labels_per_chunk=3, dtype=torch.float32):
    torch.manual_seed(0)
    head = HEADS[kind](HIDDEN, LABELS, DIM).to(dtype)
    with torch.no_grad():  # away from the init's zeros and ones, so that every term matters
        for parameter in head.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    head.chunk_elements = labels_per_chunk * BATCH * TOKENS  # 7 labels: chunks of 3, 3, 1
    return head


def _plain_softmax(scores, mask):
    scores = scores.masked_fill(~mask[:, None, :], -math.inf)
    scores = scores - scores.max(dim=-1, keepdim=True).values
    return scores.exp() / scores.exp().sum(dim=-1, keepdim=True)


def reference(head, hidden, mask):
    """Logits and weights of the head's formulas, written out plainly, all labels at once."""
    p = dict(head.named_parameters())
    if "first.weight" in p:  # laat: A = softmax(W2 tanh(W1 H)); logit = w3 · (A H) + b
        z = torch.tanh(hidden @ p["first.weight"].T)
        weights = _plain_softmax(torch.einsum("ld,btd->blt", p["second.weight"], z), mask)
        states = weights @ hidden
    else:  # cross: A = softmax(Q K^T / sqrt(d)); logit = w · LayerNorm(A V) + b
        keys, values = hidden @ p["key.weight"].T, hidden @ p["value.weight"].T
        weights = _plain_softmax(torch.einsum("ld,btd->blt", p["queries"], keys) / math.sqrt(DIM), mask)
        context = weights @ values
        mean, var = context.mean(-1, keepdim=True), context.var(-1, unbiased=False, keepdim=True)
        states = (context - mean) / torch.sqrt(var + head.norm.eps) * p["norm.weight"] + p["norm.bias"]
    return (states * p["output_weight"]).sum(-1) + p["output_bias"], weights


def _step(head, hidden, mask, upstream, forward=None, **kwargs):
    """Logits, weights and the gradients of sum(upstream * logits), hidden's first, by the
    head's forward or by forward(head, hidden, mask)."""
    head.zero_grad(set_to_none=True)
    hidden = hidden.clone().requires_grad_(True)
    logits, weights = forward(head, hidden, mask) if forward else head(hidden, mask, **kwargs)
    (logits * upstream).sum().backward()
    return logits.detach(), weights, [hidden.grad] + [p.grad for p in head.parameters()]


@pytest.mark.parametrize("kind", ["laat", "cross"])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-6), (torch.float32, 2e-5)])
def test_logits_weights_and_gradients_equal_the_plain_formulas(kind, dtype, tolerance):
    head = _head(kind, dtype=dtype)
    torch.manual_seed(1)
    hidden, mask = torch.randn(BATCH, TOKENS, HIDDEN), _mask()
    upstream = torch.randn(BATCH, LABELS, dtype=torch.float64)  # any loss: every logit's gradient differs

    logits, weights, grads = _step(head, hidden.to(dtype), mask, upstream.to(dtype))
    expected_head = copy.deepcopy(head).double()
    expected_logits, expected_weights, expected_grads = _step(
        expected_head, hidden.double(), mask, upstream, forward=reference)

    assert logits.dtype == torch.float32 and weights.dtype == dtype  # softmax in float32 at least
    assert not weights.requires_grad
    # logits come back as float32 whatever the head computes in, and so do their gradients:
    # a float64 head is exact only to float32's resolution, hence 1e-6
    torch.testing.assert_close(logits.double(), expected_logits, rtol=2e-7, atol=2e-7)
    torch.testing.assert_close(weights.double(), expected_weights.detach(), rtol=tolerance, atol=tolerance)
    names = ["hidden"] + [name for name, _ in head.named_parameters()]
    assert len(grads) == len(expected_grads) == 1 + (4 if kind == "laat" else 7)
    for name, got, want in zip(names, grads, expected_grads):
        assert got is not None and got.dtype == dtype, name
        torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["laat", "cross"])
def test_without_weights_logits_and_gradients_are_the_same(kind):
    head = _head(kind, labels_per_chunk=2)
    hidden, mask = torch.randn(BATCH, TOKENS, HIDDEN), _mask()
    upstream = torch.randn(BATCH, LABELS)
    logits, weights, grads = _step(head, hidden, mask, upstream, need_weights=True)
    bare_logits, none, bare_grads = _step(head, hidden, mask, upstream, need_weights=False)
    assert none is None and weights is not None
    torch.testing.assert_close(bare_logits, logits, rtol=0, atol=0)
    for got, want in zip(bare_grads, grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["laat", "cross"])
def test_chunk_size_does_not_change_the_results(kind):
    hidden, mask = torch.randn(BATCH, TOKENS, HIDDEN), _mask()
    upstream = torch.randn(BATCH, LABELS)
    one_chunk = _step(_head(kind, labels_per_chunk=LABELS), hidden, mask, upstream)
    for labels_per_chunk in (1, 4):
        got = _step(_head(kind, labels_per_chunk=labels_per_chunk), hidden, mask, upstream)
        torch.testing.assert_close(got[0], one_chunk[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got[1], one_chunk[1], rtol=1e-6, atol=1e-7)
        for a, b in zip(got[2], one_chunk[2]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["laat", "cross"])
def test_padding_gets_exactly_zero_weight_and_zero_gradient(kind):
    head = _head(kind)
    with torch.no_grad():  # scores in the hundreds: exp overflows unless the maximum is subtracted
        (head.second.weight if kind == "laat" else head.queries).mul_(300)
    hidden, mask = torch.randn(BATCH, TOKENS, HIDDEN), _mask()
    hidden[~mask] = 1e4  # padding that would dominate any softmax it took part in
    _, weights, grads = _step(head, hidden, mask, torch.randn(BATCH, LABELS))
    assert torch.isfinite(weights).all()
    assert torch.all(weights.permute(0, 2, 1)[~mask] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(BATCH, LABELS))
    assert torch.all(grads[0][~mask] == 0)  # nothing flows back to padded token states
    with torch.no_grad():
        _, expected = reference(copy.deepcopy(head).double(), hidden.double(), mask)
    assert expected.max() > 0.99  # the scores are that far apart
    torch.testing.assert_close(weights.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["laat", "cross"])
def test_a_notes_logits_do_not_depend_on_its_batch(kind):
    head = _head(kind)
    hidden = torch.randn(BATCH, TOKENS, HIDDEN)
    with torch.no_grad():
        batched, _ = head(hidden, _mask(), need_weights=False)
        for b, length in enumerate(LENGTHS):
            alone, _ = head(hidden[b:b + 1, :length], _mask([length], length), need_weights=False)
            torch.testing.assert_close(batched[b], alone[0], rtol=1e-6, atol=1e-6)


def test_label_attention_passes_gradcheck():
    torch.manual_seed(0)
    queries = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])

    def context(q, k, v):  # 2 labels per chunk: chunks of 2, 2, 1
        return label_attention(q, k, v, mask, temperature=1.7, chunk_elements=2 * 2 * 4)[0]

    assert torch.autograd.gradcheck(context, (queries, keys, values))


@pytest.mark.parametrize("kind", ["laat", "cross"])
def test_bf16_autocast_is_close_to_float32(kind):
    head = _head(kind)
    hidden, mask = torch.randn(BATCH, TOKENS, HIDDEN), _mask()
    upstream = torch.randn(BATCH, LABELS)
    want_logits, want_weights, want_grads = _step(head, hidden, mask, upstream)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, weights, grads = _step(head, hidden, mask, upstream)
    assert logits.dtype == torch.float32 and weights.dtype == torch.float32
    assert torch.all(weights.permute(0, 2, 1)[~mask] == 0)
    torch.testing.assert_close(logits, want_logits, rtol=0.05, atol=0.05)
    for got, want in zip(grads, want_grads):
        assert got.dtype == torch.float32  # parameters and hidden stay float32
        torch.testing.assert_close(got, want, rtol=0.1, atol=0.05 * want.abs().max().item())
