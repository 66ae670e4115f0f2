"""Coding notes: offsets into the original text (plain, cleaned, long), windows, attributions,
evidence spans, and evidence that lands on planted trigger phrases."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
import torch
from model_fixtures import minilm_path, tiny_bert
from transformers import AutoTokenizer

from clem_icd.batching import pad_batch
from clem_icd.data.text import clean_text, clean_text_series, clean_text_with_offsets
from clem_icd.errors import ClemError
from clem_icd.inference import NotePredictor, PredictOptions
from clem_icd.inference.attribution import token_attributions
from clem_icd.inference.spans import evidence_spans
from clem_icd.inference.tokens import encode_notes, note_windows, special_tokens
from clem_icd.model import ICDCoder

CODES = ["I10", "E11.9", "J18.9", "N17.9", "0DT70ZZ"]
NOTE = "Pt. with HTN (essential hypertension) & T2DM; BP 150/90.\nAdmitted 03/04 for Pneumonia!"
CLEANED_NOTE = "  HISTORY:\tİstanbul-born 45 yo, K+ 3.2 -- Hyper-Tension 2 3 noted;\n\n  ÉCG normal 12 "


def make_coder(**options) -> ICDCoder:
    torch.manual_seed(0)
    options.setdefault("max_length", 512)
    options.setdefault("chunk_size", options["max_length"])
    coder = ICDCoder.from_encoder(str(minilm_path()), CODES, encoder_config=tiny_bert(),
                                  code_systems=["icd10cm"] * 4 + ["icd10pcs"], **options)
    return coder.eval()


def long_note(words: int = 700) -> str:
    rng = random.Random(1)
    vocabulary = ["pain", "fever", "Stable", "hypertension", "cough,", "x-ray:", "120/80", "renal", "(ok)"]
    return " ".join(rng.choice(vocabulary) for _ in range(words))


# ---------------------------------------------------------------- text and tokens


def test_cleaning_with_offsets_equals_cleaning_and_points_at_source_characters():
    rng = random.Random(0)
    alphabet = list("ab Z9 0 1 23 ,.-\n\t") + ["İ", "K", "Σ", "é", "ß", "\u00a0", "\u2028"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    texts.append(CLEANED_NOTE)
    expected = clean_text_series(pl.Series(texts)).to_list()
    for text, reference in zip(texts, expected):
        cleaned, origin = clean_text_with_offsets(text)
        assert cleaned == reference
        assert len(origin) == len(cleaned)
        for char, source in zip(cleaned, origin):
            assert char == " " or char in text[source].lower()
        assert clean_text(reference) == reference  # idempotent: prepared text may be cleaned again


def test_token_spans_point_into_the_original_text():
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    (plain,) = encode_notes(tokenizer, [NOTE])
    pieces = tokenizer.convert_ids_to_tokens(plain.ids)
    for piece, (start, end) in zip(pieces, plain.spans):
        assert NOTE[start:end].lower() == piece.removeprefix("##")
    (cleaned,) = encode_notes(tokenizer, [CLEANED_NOTE], cleaning="edin2023")
    assert cleaned.ids == tokenizer(clean_text(CLEANED_NOTE), add_special_tokens=False)["input_ids"]
    for piece, (start, end) in zip(tokenizer.convert_ids_to_tokens(cleaned.ids), cleaned.spans):
        assert clean_text(CLEANED_NOTE[start:end]).replace(" ", "") == piece.removeprefix("##")
    # 'Hyper-Tension' becomes 'hyper tension': two words, each back on its original letters.
    words = {CLEANED_NOTE[s:e] for s, e in cleaned.spans}
    assert {"Hyper", "Tension", "İ", "ÉCG"} <= words or {"Hyper", "Tension"} <= words


def test_inference_reads_exactly_the_training_tokens():
    coder = make_coder(max_length=64)
    texts = [NOTE, long_note(), "short"]
    predictor = NotePredictor(coder)
    notes = encode_notes(coder.tokenizer, texts)
    windows = predictor._windows(notes)
    got = [predictor.prefix + notes[w.note].ids[w.start:w.end] + predictor.suffix for w in windows]
    assert got == coder.tokenize(texts)


def test_note_windows_cover_the_note_with_the_given_stride():
    assert [(w.start, w.end) for w in note_windows(0, 10, 4, 3)] == [(0, 4), (3, 7), (6, 10)]
    assert [(w.start, w.end) for w in note_windows(0, 9, 4, 4)] == [(0, 4), (4, 8), (5, 9)]
    assert [(w.start, w.end) for w in note_windows(0, 3, 4, 2)] == [(0, 3)]
    assert [(w.start, w.end) for w in note_windows(0, 10, 4, None)] == [(0, 4)]
    with pytest.raises(ClemError, match="window of 4 tokens"):
        note_windows(0, 10, 4, 5)  # windows (0, 4), (5, 9), ... would never read token 4


def test_a_window_stride_longer_than_the_window_is_refused():
    coder = make_coder(max_length=64)  # window: 64 - [CLS] - [SEP] = 62 content tokens
    assert NotePredictor(coder, PredictOptions(window_stride=62)).capacity == 62
    with pytest.raises(ClemError, match=r"--window-stride 63 is larger than this model's window of 62 tokens"):
        NotePredictor(coder, PredictOptions(window_stride=63))
    with pytest.raises(ClemError, match="--window-stride 100"):
        coder.predict_proba([NOTE], window_stride=100)


def test_special_tokens_of_bert():
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    assert special_tokens(tokenizer) == ([tokenizer.cls_token_id], [tokenizer.sep_token_id])


# ---------------------------------------------------------------- windows


def test_windowed_scores_are_the_maximum_over_independently_scored_windows():
    coder = make_coder(max_length=64)
    text = long_note(300)
    stride = 20
    ids = coder.tokenizer(text, add_special_tokens=False)["input_ids"]
    capacity = 64 - 2
    starts = list(range(0, len(ids) - capacity, stride)) + [len(ids) - capacity]
    with torch.no_grad():
        logits = [coder(*pad_batch([[coder.tokenizer.cls_token_id, *ids[s:s + capacity], coder.tokenizer.sep_token_id]], 0))
                  for s in starts]
    expected = torch.sigmoid(torch.cat(logits).max(dim=0).values).numpy()
    got = coder.predict_proba([text, NOTE], window_stride=stride, precision="fp32")
    np.testing.assert_allclose(got[0], expected, atol=1e-6)
    # Without windows: the first window only, and the note is marked truncated.
    truncated = coder.predict_proba([text], precision="fp32")[0]
    np.testing.assert_allclose(truncated, torch.sigmoid(logits[0][0]).numpy(), atol=1e-6)
    options = PredictOptions(threshold=0.0, precision="fp32")
    assert [r["truncated"] for r in NotePredictor(coder, options).predict([text, NOTE])] == [True, False]
    options.window_stride = stride
    assert [r["truncated"] for r in NotePredictor(coder, options).predict([text, NOTE])] == [False, False]


# ---------------------------------------------------------------- attributions and evidence


@pytest.mark.parametrize("method", ["attention", "attingrad", "inputxgrad"])
@pytest.mark.parametrize("cleaning", ["none", "edin2023"])
def test_evidence_text_is_the_original_text_at_its_offsets(method, cleaning):
    coder = make_coder(max_length=64, chunk_size=32, text_cleaning=cleaning)
    texts = [NOTE, CLEANED_NOTE, long_note(400)]
    for stride in (None, 24):
        results = coder.predict(texts, threshold=0.0, explain=method, window_stride=stride,
                                evidence_threshold=0.0, precision="fp32")
        spans = 0
        for text, codes in zip(texts, results):
            assert len(codes) == len(CODES)
            for code in codes:
                for span in code["evidence"]:
                    assert span["text"] == text[span["start"]:span["end"]] and span["text"].strip()
                    assert 0 < span["score"] <= 1
                    spans += 1
        assert spans >= len(texts) * len(CODES)
    # Windowed evidence of the long note reaches past the first window's text.
    last = max(span["end"] for code in results[2] for span in code["evidence"])
    first_window_end = encode_notes(coder.tokenizer, [texts[2]], cleaning)[0].spans[61, 1]
    assert last > first_window_end


def test_very_long_note_windows_keep_exact_offsets_to_its_end():
    coder = make_coder(max_length=512, text_cleaning="edin2023")
    text = long_note(40_000)  # ~270k characters, ~60k tokens
    (result,) = NotePredictor(coder, PredictOptions(threshold=0.0, explain="attention", window_stride=256,
                                                    evidence_threshold=0.0, precision="fp32")).predict([text])
    assert result["truncated"] is False
    spans = [span for code in result["codes"] for span in code["evidence"]]
    assert all(text[s["start"]:s["end"]] == s["text"] for s in spans)
    assert max(s["end"] for s in spans) > len(text) // 2  # evidence from windows far into the note


def _direct_input_x_gradient(coder, text: str, code: int) -> np.ndarray:
    ids, mask = pad_batch(coder.tokenize([text]), 0)
    captured = []
    handle = coder.encoder.embeddings.register_forward_hook(lambda _m, _i, out: captured.append(out))
    logits = coder(ids, mask)
    handle.remove()
    (gradient,) = torch.autograd.grad(logits[0, code], captured[0])
    return (captured[0] * gradient).norm(dim=-1)[0, : ids.shape[1]].detach().numpy()


def test_gradient_attributions_equal_a_direct_computation_and_ignore_batching():
    coder = make_coder(max_length=128)
    texts = [NOTE, long_note(60)]
    choices = {0: [1, 4], 1: [2]}
    ids, mask = pad_batch(coder.tokenize(texts), 0)
    _, together = token_attributions(coder, ids, mask, "inputxgrad", lambda b, row: choices[b])
    _, with_attention = token_attributions(coder, ids, mask, "attingrad", lambda b, row: choices[b])
    with torch.no_grad():
        _, attention = coder(ids, mask, return_attention=True)
    for b, text in enumerate(texts):
        n = len(coder.tokenize([text])[0])
        for code in choices[b]:
            direct = _direct_input_x_gradient(coder, text, code)
            np.testing.assert_allclose(together[b][code][:n], direct, rtol=1e-4, atol=1e-7)
            assert np.all(together[b][code][n:] == 0)  # padding gets nothing
            np.testing.assert_allclose(with_attention[b][code], together[b][code] * attention[b, code, : ids.shape[1]].numpy(),
                                       rtol=1e-5, atol=1e-9)


def test_evidence_spans_merge_adjacent_words_and_sum_subwords():
    text = "Chest pain, hypertension and fever."
    # tokens: chest | pain | , | hyper | ##tension | and | fever | .
    spans = np.array([[0, 5], [6, 10], [10, 11], [12, 17], [17, 24], [25, 28], [29, 34], [34, 35]])
    words = np.array([0, 1, 2, 3, 3, 4, 5, 6])
    scores = np.array([3.0, 2.0, 9.0, 1.0, 1.0, 0.5, 2.5, 0.0])  # the comma is not evidence
    found = evidence_spans(text, spans, words, scores, threshold=0.1, words=10, max_spans=5)
    total = scores.sum()
    assert found == [
        {"start": 0, "end": 10, "score": round(5.0 / total, 4), "text": "Chest pain"},
        {"start": 29, "end": 34, "score": round(2.5 / total, 4), "text": "fever"},
        {"start": 12, "end": 24, "score": round(2.0 / total, 4), "text": "hypertension"},
    ]
    # At most 2 words: 'Chest' and 'fever' (the best two), never adjacent, so two spans.
    assert [s["text"] for s in evidence_spans(text, spans, words, scores, threshold=0.0, words=2)] == ["Chest", "fever"]
    assert evidence_spans(text, spans, words, np.zeros(8)) == []
    assert len(evidence_spans(text, spans, words, scores, threshold=0.0, max_spans=1)) == 1


def test_given_codes_are_reported_and_explained():
    coder = make_coder()
    predictor = NotePredictor(coder, PredictOptions(explain="attention", evidence_threshold=0.0))
    (result,) = predictor.predict([NOTE], codes=[["0DT70ZZ", "I10"]])
    assert [c["code"] for c in result["codes"]] == ["0DT70ZZ", "I10"]
    assert all(c["evidence"] for c in result["codes"])
    with pytest.raises(ClemError, match="not known to this model, e.g. X99"):
        predictor.predict([NOTE], codes=[["X99"]])


def test_predict_options_are_checked():
    with pytest.raises(ClemError, match="--explain must be one of"):
        PredictOptions(explain="shap")
    with pytest.raises(ClemError, match="--threshold"):
        PredictOptions(threshold=1.5)
    with pytest.raises(TypeError, match="list of texts"):
        make_coder().predict(NOTE)


def test_evidence_lands_on_the_planted_trigger_phrase(trigger_model):
    """A coder trained on generated notes explains each correctly predicted code by the
    phrase that was planted for it."""
    from trigger_fixture import trigger_note

    from clem_icd.evaluation.evidence_metrics import token_metrics

    coder = ICDCoder.from_pretrained(trigger_model)
    rng = np.random.default_rng(123)
    notes = [trigger_note(rng) for _ in range(30)]
    texts = [text for _, text, _ in notes]
    gold = {(str(i), code): [(s, e)] for i, (_, _, spans) in enumerate(notes) for s, e, code in spans}
    for method in ("attention", "attingrad"):
        results = coder.predict(texts, explain=method)
        hits = []
        predicted = {}
        for i, codes in enumerate(results):
            for code in codes:
                predicted[(str(i), code["code"].replace(".", ""))] = [(e["start"], e["end"]) for e in code["evidence"]]
                if (str(i), code["code"]) in gold and code["evidence"]:
                    (start, end), top = gold[str(i), code["code"]][0], code["evidence"][0]
                    hits.append(top["start"] < end and start < top["end"])
        assert len(hits) >= 30, "the trigger model should find most planted codes"
        assert np.mean(hits) >= 0.8, f"{method}: top evidence span on the planted phrase in {np.mean(hits):.0%}"
        metrics = token_metrics({(n, c.replace(".", "")): s for (n, c), s in gold.items()}, predicted,
                                {str(i): t for i, t in enumerate(texts)})
        assert metrics["explained"]["recall"] >= 0.4 and metrics["explained"]["precision"] >= 0.3
