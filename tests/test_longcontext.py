"""The fast ModernBERT forward (clem_icd.longcontext) against the stock transformers model: equal
outputs on every real token, equal gradients, independent of padding and batch company, and the
coder's padding rules (a batch as wide as its longest note; only last chunks padded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import tiny_modernbert

from clem_icd.batching import pad_batch
from clem_icd.errors import ClemError
from clem_icd.longcontext import accelerate_modernbert, modernbert_forward
from clem_icd.longcontext.attention import BLOCK, blockwise_local_attention, packed_attention

MODES = ["blockwise", "packed"]
WINDOW = 64  # tiny_modernbert: local_attention 128, so |i - j| <= 64


def modernbert(**overrides) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(0)
    config = {**tiny_modernbert(), "vocab_size": 512, **overrides}
    config.pop("cls_token_id"), config.pop("sep_token_id"), config.pop("bos_token_id"), config.pop("eos_token_id")
    model = AutoModel.from_config(AutoConfig.for_model(**config), attn_implementation="sdpa")
    return model.eval()


def batch_of(lengths: list[int], seed: int = 0, vocab: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    notes = [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in lengths]
    return pad_batch(notes, 0)


def stock(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def fast(model, ids, mask, mode) -> torch.Tensor:
    with torch.no_grad():
        return modernbert_forward(model, ids, mask, mode).last_hidden_state


def assert_equal_on_real_tokens(got, expected, mask, atol):
    assert got.shape == expected.shape
    real = mask.bool()
    assert torch.isfinite(got).all(), "padding rows must stay finite"
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=atol)


# Lengths: 1 token, below the window, at and around the block and window boundaries, not a
# multiple of the block, padding longer than the window, and batches mixing all of these.
LENGTHS = [[1], [40], [BLOCK - 1], [BLOCK], [BLOCK + 1], [WINDOW + 1, 2 * WINDOW + 1], [333],
           [1, 700], [700, 65, 129, 1, 256]]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lengths", LENGTHS, ids=lambda lengths: "-".join(map(str, lengths)))
def test_equals_stock_model_on_real_tokens(mode, lengths):
    model = modernbert()
    ids, mask = batch_of(lengths)
    assert_equal_on_real_tokens(fast(model, ids, mask, mode), stock(model, ids, mask), mask, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_equals_stock_model_base_shaped(mode):
    """ModernBERT-base's widths (768 hidden, 12 heads of 64, GLU 1,152) on three layers, one of
    them global, at lengths spanning several blocks and windows."""
    model = modernbert(hidden_size=768, num_attention_heads=12, intermediate_size=1152, num_hidden_layers=3)
    ids, mask = batch_of([600, 257, 64])
    assert_equal_on_real_tokens(fast(model, ids, mask, mode), stock(model, ids, mask), mask, atol=1e-4)


def test_a_note_is_the_same_alone_padded_and_packed():
    model = modernbert()
    alone_ids, alone_mask = batch_of([300], seed=1)
    ids, mask = batch_of([700, 300], seed=3)
    ids[1, :300] = alone_ids[0]
    reference = fast(model, alone_ids, alone_mask, "blockwise")[0]
    for mode in MODES:
        torch.testing.assert_close(fast(model, ids, mask, mode)[1, :300], reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast(model, alone_ids, alone_mask, "packed")[0], reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_changing_one_note_leaves_the_other_bitwise_unchanged(mode):
    model = modernbert()
    ids, mask = batch_of([500, 300, 200], seed=4)
    before = fast(model, ids, mask, mode)
    ids[0, :500] = torch.randint(1, 512, (500,), generator=torch.Generator().manual_seed(9))
    after = fast(model, ids, mask, mode)
    assert not torch.equal(after[0, :500], before[0, :500])
    assert torch.equal(after[1, :300], before[1, :300])
    assert torch.equal(after[2, :200], before[2, :200])


@pytest.mark.parametrize("mode", MODES)
def test_gradients_equal_stock_in_double_precision(mode):
    model = modernbert().double()
    ids, mask = batch_of([150, 70], seed=5)
    real = mask.bool()
    weights = torch.randn(int(real.sum()), model.config.hidden_size, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(6))

    def gradients(forward) -> dict[str, torch.Tensor]:
        model.zero_grad()
        (forward()[real] * weights).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    expected = gradients(lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state)
    got = gradients(lambda: modernbert_forward(model, ids, mask, mode).last_hidden_state)
    assert got.keys() == expected.keys() and len(got) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-8, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = modernbert()
    model.train()
    ids, mask = batch_of([200, 90], seed=7)

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        modernbert_forward(model, ids, mask, "blockwise").last_hidden_state[mask.bool()].square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    model.activation_checkpointing_enable()
    assert any(getattr(layer, "gradient_checkpointing", False) for layer in model.layers)
    for got, expected in zip(gradients(), plain):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_banded_kernel_equals_a_dense_masked_reference():
    """The kernel alone, against softmax over an explicit (tokens x tokens) mask: two notes
    packed in one row, one padded tail, window 5, block 4."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 24, 2, 8, dtype=torch.float64) for _ in range(3))
    segments = torch.tensor([[0] * 9 + [1] * 11 + [-1] * 4])
    got = blockwise_local_attention(q, k, v, segments, window=5, block=4, scale=0.3)
    i = torch.arange(24)
    allowed = ((i[:, None] - i[None, :]).abs() <= 5) & (segments[0][:, None] == segments[0][None, :])
    scores = torch.einsum("qhd,khd->hqk", q[0], k[0]) * 0.3
    expected = torch.einsum("hqk,khd->qhd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), v[0])
    torch.testing.assert_close(got[0], expected)
    windowless = packed_attention(q[0], k[0], v[0], torch.tensor([0, 9, 20], dtype=torch.int32), 11, None, 0.3)
    whole = (segments[0][:, None] == segments[0][None, :])[:20, :20]
    expected = torch.einsum("hqk,khd->qhd", (scores[:, :20, :20]).masked_fill(~whole, float("-inf")).softmax(-1), v[0, :20])
    torch.testing.assert_close(windowless, expected)


def test_accelerate_modernbert_wraps_the_model_and_refuses_others():
    model = modernbert()
    fast_model = accelerate_modernbert(model)
    ids, mask = batch_of([90, 30])
    with torch.no_grad():
        got = fast_model(ids, mask).last_hidden_state
    assert_equal_on_real_tokens(got, stock(model, ids, mask), mask, atol=1e-5)
    assert fast_model.model is model  # the weights are shared, not copied
    from transformers import AutoConfig, AutoModel

    bert = AutoModel.from_config(AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=1,
                                                      num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match="needs a ModernBertModel"):
        accelerate_modernbert(bert)


# ---------------------------------------------------------------------------------- the coder

def coder(**options):
    from model_fixtures import minilm_path

    from clem_icd.model import ICDCoder

    torch.manual_seed(0)
    options = {"max_length": 8192, "chunk_size": 8192, "encoder_config": tiny_modernbert(), **options}
    return ICDCoder.from_encoder(str(minilm_path()), ["I10", "E11.9", "J18.9"], **options).eval()


NOTES = ["Hypertension, on lisinopril. " * n for n in (3, 80, 200, 15)]


@pytest.mark.parametrize("head", ["laat", "cross"])
def test_coder_probabilities_match_the_stock_path(head):
    fast_coder = coder(head=head)
    stock_coder = coder(head=head, attention="stock")
    stock_coder.load_state_dict(fast_coder.state_dict())
    got = fast_coder.predict_proba(NOTES, batch_size=3)
    expected = stock_coder.predict_proba(NOTES, batch_size=3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    threshold = float(np.median(expected))

    def codes(model) -> list[list[str]]:
        return [[c["code"] for c in note] for note in model.predict(NOTES, threshold=threshold)]

    assert codes(fast_coder) == codes(stock_coder) and any(codes(stock_coder))


@pytest.mark.parametrize("mode", MODES)
def test_the_encoder_reads_a_batch_only_as_wide_as_its_longest_note(mode):
    """Not max_length (8,192): the embeddings see the batch's longest note; the layers see that
    width rounded up to the attention block (blockwise) or the real tokens alone (packed)."""
    fast_coder = coder(attention=mode)
    widths = {}

    def record(name: str):
        def hook(_module, _inputs, out) -> None:
            widths[name] = tuple(out.shape[:2])
        return hook

    for name in ("embeddings", "final_norm"):
        getattr(fast_coder.encoder, name).register_forward_hook(record(name))
    ids, mask = pad_batch(fast_coder.tokenize(NOTES[:2]), 0)
    with torch.no_grad():
        fast_coder(ids, mask)
    longest = ids.shape[1]
    assert longest % BLOCK and longest < 1000
    layers = (2, -(-longest // BLOCK) * BLOCK) if mode == "blockwise" else (1, int(mask.sum()))
    assert widths == {"embeddings": (2, longest), "final_norm": layers}


def test_chunking_pads_only_the_last_chunk(monkeypatch):
    from model_fixtures import tiny_bert

    chunked = coder(encoder_config=tiny_bert(), max_length=512, chunk_size=32)
    calls = []
    encode = chunked.encode_sequences
    monkeypatch.setattr(chunked, "encode_sequences", lambda ids, mask: calls.append(
        (tuple(ids.shape), int(mask.sum()))) or encode(ids, mask))
    notes = [list(range(1000, 1070)), list(range(2000, 2040))]  # 70 and 40 tokens
    ids, mask = pad_batch(notes, 0)
    with torch.no_grad():
        hidden = chunked.encode(ids, mask)
        # Three full chunks (two of note 0, one of note 1), then the last chunks of 6 and 8
        # tokens, padded to 8, not to 32.
        assert calls == [((3, 32), 96), ((2, 8), 14)]
        for row, n in enumerate((70, 40)):
            for start in range(0, n, 32):
                end = min(n, start + 32)
                alone = chunked.encoder(input_ids=ids[row:row + 1, start:end]).last_hidden_state[0]
                torch.testing.assert_close(hidden[row, start:end], alone, rtol=0, atol=1e-5)


def test_packed_refuses_attention_dropout_and_auto_avoids_it():
    with pytest.raises(ClemError, match="'packed' does not apply the encoder's attention dropout"):
        coder(encoder_config={**tiny_modernbert(), "attention_dropout": 0.1}, attention="packed")
    from clem_icd.longcontext import choose_mode

    model = modernbert(attention_dropout=0.1)
    assert choose_mode(model) == "packed"  # eval: no dropout
    assert choose_mode(model.train()) == "blockwise"


def test_fast_paths_refuse_other_encoders():
    from model_fixtures import tiny_bert

    with pytest.raises(ClemError, match="attention 'blockwise' needs a ModernBERT encoder"):
        coder(encoder_config=tiny_bert(), max_length=512, chunk_size=512, attention="blockwise")
    with pytest.raises(ClemError, match="attention must be one of auto, stock, blockwise, packed"):
        coder(attention="flash")
