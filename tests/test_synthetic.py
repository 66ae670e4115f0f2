"""The synthetic corpus: determinism, planted labels and spans, the manifest, and learnability."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest

from clem_icd.baselines import TfidfCoder
from clem_icd.data import synthetic
from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.synthetic import (
    COMMON_CODES,
    NEGATED_TEMPLATES,
    code_phrases,
    make_synthetic_dataset,
    synthetic_note,
)
from clem_icd.errors import ClemError


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    make_synthetic_dataset(out, n_documents=600, n_codes=40, seed=0)
    return out


def test_same_seed_same_bytes_other_seed_other_data(dataset_dir, tmp_path):
    again = tmp_path / "again"
    make_synthetic_dataset(again, n_documents=600, n_codes=40, seed=0)
    for name in ("documents.parquet", "codes.tsv"):
        assert (again / name).read_bytes() == (dataset_dir / name).read_bytes()
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (dataset_dir, again)]
    for manifest in manifests:
        manifest.pop("created_at")
    assert manifests[0] == manifests[1]

    other = tmp_path / "other"
    make_synthetic_dataset(other, n_documents=600, n_codes=40, seed=1)
    assert (other / "documents.parquet").read_bytes() != (dataset_dir / "documents.parquet").read_bytes()


def test_spans_are_the_planted_phrases_and_negated_codes_are_not_labels():
    rng = np.random.default_rng(3)
    for _ in range(50):
        positive = [COMMON_CODES[i] for i in rng.choice(30, size=int(rng.integers(2, 7)), replace=False)]
        negated = [c for c in COMMON_CODES[30:] if c not in positive][: int(rng.integers(1, 3))]
        text, spans = synthetic_note(positive, rng, negated=negated)
        assert {code for _, _, code in spans} == set(positive)
        assert len(spans) == len(positive)
        for start, end, code in spans:
            assert text[start:end] in code_phrases(code)
        # Each negated code is in the text, under a negation cue, and has no span.
        cues = "|".join(re.escape(t.split("{}")[0]) for t in NEGATED_TEMPLATES)
        for code in negated:
            assert any(re.search(f"(?:{cues}){re.escape(p)}", text) for p in code_phrases(code))


def test_default_negations_and_rejects_overlap():
    text, spans = synthetic_note(["I10", "J18.9"], np.random.default_rng(0))
    assert {code for _, _, code in spans} == {"I10", "J18.9"}
    assert spans == sorted(spans)  # in text order
    assert any(cue.split("{}")[0] in text for cue in NEGATED_TEMPLATES)
    with pytest.raises(ValueError, match="both positive and negated"):
        synthetic_note(["I10"], np.random.default_rng(0), negated=["I10"])


def test_manifest_splits_and_counts(dataset_dir):
    data = PreparedDataset.load(dataset_dir)
    manifest = data.manifest
    assert manifest["source"] == "synthetic"
    assert "synthetic" in manifest["description"].lower()
    assert "SYNTHETIC" in synthetic.__doc__
    assert manifest["options"]["seed"] == 0
    assert manifest["counts"]["documents"] == 600
    assert manifest["counts"]["by_split"] == {"train": 420, "val": 90, "test": 90}
    assert data.documents["split"].value_counts().sort("split").rows() == [
        ("test", 90), ("train", 420), ("val", 90)]
    assert set(data.code_list) <= set(COMMON_CODES[:40])
    assert all(data.codes["description"].str.len_chars() > 0)


def test_labels_are_mentioned_codes_with_varied_frequency_and_length(dataset_dir):
    documents = PreparedDataset.load(dataset_dir).documents
    for text, codes in documents.select("text", "codes").iter_rows():
        assert 2 <= len(codes) <= 6
        for code in codes:
            assert any(phrase in text for phrase in code_phrases(code))
    counts = documents.explode("codes")["codes"].value_counts()["count"]
    assert counts.max() > 10 * counts.min()  # Zipf-like: frequent and rare codes
    words = documents["text"].str.split(" ").list.len()
    assert words.min() < 100 and words.max() > 600


def test_bad_arguments(tmp_path, dataset_dir):
    with pytest.raises(ClemError, match="n_codes"):
        make_synthetic_dataset(tmp_path / "x", n_codes=len(COMMON_CODES) + 1)
    with pytest.raises(ClemError, match="exists"):
        make_synthetic_dataset(dataset_dir)
    with pytest.raises(ClemError, match="not an ICD-10-CM code"):
        code_phrases("XYZ.99")


def _label_matrix(label_lists: list[list[str]], codes: list[str]) -> np.ndarray:
    column = {code: j for j, code in enumerate(codes)}
    matrix = np.zeros((len(label_lists), len(codes)), dtype=bool)
    for i, doc_codes in enumerate(label_lists):
        matrix[i, [column[c] for c in doc_codes]] = True
    return matrix


def _micro_f1(predicted: np.ndarray, gold: np.ndarray) -> float:
    tp = np.sum(predicted & gold)
    fp, fn = np.sum(predicted & ~gold), np.sum(~predicted & gold)
    return float(tp / (tp + (fp + fn) / 2))


def test_tfidf_baseline_learns_the_synthetic_codes(dataset_dir):
    data = PreparedDataset.load(dataset_dir)
    codes = data.code_list
    train, val, test = (data.split(name) for name in ("train", "val", "test"))
    coder = TfidfCoder.fit(train["text"].to_list(), train["codes"].to_list(), codes)
    # One global threshold, the best micro-F1 on val (as in the evaluation protocol).
    val_scores = coder.predict_proba(val["text"].to_list())
    val_gold = _label_matrix(val["codes"].to_list(), codes)
    threshold = max(np.linspace(0, 1, 100), key=lambda t: _micro_f1(val_scores > t, val_gold))
    gold = _label_matrix(test["codes"].to_list(), codes)
    learned = _micro_f1(coder.predict_proba(test["text"].to_list()) > threshold, gold)

    # Trivial baseline: give every note the m most frequent training codes (best m).
    frequency = _label_matrix(train["codes"].to_list(), codes).sum(axis=0)
    trivial = 0.0
    for m in range(1, 7):
        predicted = np.zeros_like(gold)
        predicted[:, np.argsort(-frequency, kind="stable")[:m]] = True
        trivial = max(trivial, _micro_f1(predicted, gold))
    # Measured: learned 0.73, trivial 0.40 (bag of words cannot tell negated mentions apart).
    assert learned > trivial + 0.25, (learned, trivial)


def test_documents_parquet_has_the_prepared_schema(dataset_dir):
    frame = pl.read_parquet(dataset_dir / "documents.parquet")
    assert frame.schema == pl.Schema({"id": pl.String, "text": pl.String,
                                      "codes": pl.List(pl.String), "split": pl.String})
