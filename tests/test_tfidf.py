"""The TF-IDF + logistic-regression baseline: scores, constant codes, saving and loading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clem_icd.baselines import TfidfCoder
from clem_icd.errors import ClemError

# Each code has one made-up trigger word; the filler words carry no signal.
TRIGGERS = {"A01.0": "zorblax", "B02.1": "quintessa", "C03.2": "plumbrite", "D04.3": "vextrane",
            "E05.4": "gryphonic"}
FILLER = ("patient", "admitted", "stable", "overnight", "reports", "improved", "medication",
          "follow", "clinic", "review", "normal", "exam", "today", "pain", "mild")


def make_corpus(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
    rng = np.random.default_rng(seed)
    codes = list(TRIGGERS)
    texts, labels = [], []
    for _ in range(n):
        chosen = [codes[i] for i in rng.choice(len(codes), size=int(rng.integers(1, 3)), replace=False)]
        words = list(rng.choice(FILLER, size=int(rng.integers(5, 15))))
        for code in chosen:
            words.insert(int(rng.integers(len(words) + 1)), TRIGGERS[code])
        texts.append(" ".join(words))
        labels.append(chosen)
    return texts, labels


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(300, seed=0)


@pytest.fixture(scope="module")
def coder(corpus):
    texts, labels = corpus
    # A code order unlike the trigger order, so that column order is really tested.
    codes = ["D04.3", "A01.0", "E05.4", "C03.2", "B02.1"]
    return TfidfCoder.fit(texts, labels, codes, descriptions={"A01.0": "first"}, n_jobs=2)


def test_predict_proba_shape_order_and_range(coder):
    notes = [f"patient {TRIGGERS[code]} stable today" for code in coder.codes]
    scores = coder.predict_proba(notes)
    assert scores.shape == (len(notes), len(coder.codes))
    assert scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    # Note i mentions the trigger of codes[i], so the diagonal is each row's maximum.
    assert np.argmax(scores, axis=1).tolist() == list(range(len(coder.codes)))
    assert coder.predict_proba([]).shape == (0, len(coder.codes))


def test_ranks_the_triggered_code_first_on_held_out_notes(coder):
    texts, labels = make_corpus(50, seed=1)
    scores = coder.predict_proba(texts)
    for row, doc_codes in zip(scores, labels):
        best = coder.codes[int(np.argmax(row))]
        assert best in doc_codes
        assert {coder.codes[j] for j in np.argsort(-row)[:len(doc_codes)]} == set(doc_codes)


def test_predict_uses_the_threshold(coder):
    note = [f"review {TRIGGERS['C03.2']} clinic"]
    (codes,) = coder.predict(note)
    assert codes[0]["code"] == "C03.2"
    # The shape of ICDCoder.predict: {code, system, description, probability}, best first.
    assert codes[0]["system"] == "icd10cm" and 0.5 < codes[0]["probability"] <= 1
    row = coder.predict_proba(note)[0]
    above = [coder.codes[j] for j in np.argsort(-row, kind="stable") if row[j] > coder.threshold]
    assert [c["code"] for c in codes] == above
    old = coder.threshold
    try:
        coder.threshold = 1.0
        assert coder.predict(note) == [[]]
    finally:
        coder.threshold = old
    assert coder.predict(note, threshold=1.0) == [[]]


def test_descriptions_follow_the_code_order(coder):
    assert coder.descriptions == ["", "first", "", "", ""]
    assert coder.threshold == 0.5


def test_codes_without_positives_or_always_positive_get_constant_scores(corpus):
    texts, labels = corpus
    always = [doc + ["Z99.9"] for doc in labels]
    codes = ["A01.0", "B02.1", "C03.2", "D04.3", "E05.4", "N00.0", "Z99.9"]
    coder = TfidfCoder.fit(texts, always, codes, n_jobs=1)
    scores = coder.predict_proba(texts[:10] + ["unrelated words only"])
    never, every = scores[:, codes.index("N00.0")], scores[:, codes.index("Z99.9")]
    assert np.all(never == never[0]) and never[0] < 1e-6
    assert np.all(every == every[0]) and every[0] > 1 - 1e-6
    assert len(coder.fitted_index) == 5


def test_save_load_round_trip_gives_identical_probabilities(coder, tmp_path):
    coder.threshold = 0.37
    try:
        folder = coder.save_pretrained(tmp_path / "model")
    finally:
        coder.threshold = 0.5
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors",
                                                        "vectorizer.json"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "tfidf"
    assert config["codes"] == coder.codes
    assert config["hyperparameters"]["C"] == coder.config["C"]
    assert "clem_icd_version" in config

    loaded = TfidfCoder.from_pretrained(folder)
    texts, _ = make_corpus(25, seed=2)
    assert np.array_equal(loaded.predict_proba(texts), coder.predict_proba(texts))
    assert loaded.codes == coder.codes
    assert loaded.threshold == 0.37
    assert loaded.descriptions == coder.descriptions

    # Saving again replaces the model folder in place.
    loaded.threshold = 0.2
    loaded.save_pretrained(folder)
    assert TfidfCoder.from_pretrained(folder).threshold == 0.2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_save_refuses_to_replace_an_unrelated_folder(coder, tmp_path):
    other = tmp_path / "results"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ClemError, match="not a TF-IDF model"):
        coder.save_pretrained(other)
    assert (other / "notes.txt").read_text() == "keep me"


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_from_pretrained_on_bad_folders_raises_clem_error(coder, tmp_path):
    with pytest.raises(ClemError) as error:
        TfidfCoder.from_pretrained(tmp_path / "absent")
    assert "not found" in _one_line(error)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClemError) as error:
        TfidfCoder.from_pretrained(empty)
    assert "config.json" in _one_line(error)

    good = coder.save_pretrained(tmp_path / "good")
    damaged = {
        "config.json": lambda p: p.write_text("{not json"),
        "vectorizer.json": lambda p: p.write_text(json.dumps({"terms": ["a"], "idf": [1.0]})),
        "model.safetensors": lambda p: p.write_bytes(p.read_bytes()[:100]),
    }
    for name, damage in damaged.items():
        bad = tmp_path / f"bad-{name}"
        bad.mkdir()
        for file in good.iterdir():
            (bad / file.name).write_bytes(file.read_bytes())
        damage(bad / name)
        with pytest.raises(ClemError) as error:
            TfidfCoder.from_pretrained(bad)
        assert str(bad) in _one_line(error)

    wrong_type = tmp_path / "wrong-type"
    wrong_type.mkdir()
    for file in good.iterdir():
        (wrong_type / file.name).write_bytes(file.read_bytes())
    config = json.loads((wrong_type / "config.json").read_text())
    (wrong_type / "config.json").write_text(json.dumps(config | {"model_type": "plm_icd"}))
    with pytest.raises(ClemError, match="model_type"):
        TfidfCoder.from_pretrained(wrong_type)


def test_fit_rejects_bad_input(corpus):
    texts, labels = corpus
    with pytest.raises(ClemError, match="not in the code list"):
        TfidfCoder.fit(texts, labels, ["A01.0"])
    with pytest.raises(ClemError, match="unknown TF-IDF option"):
        TfidfCoder.fit(texts, labels, list(TRIGGERS), config={"alpha": 1})
    with pytest.raises(ClemError, match="label lists"):
        TfidfCoder.fit(texts, labels[:-1], list(TRIGGERS))
    with pytest.raises(ClemError, match="duplicates"):
        TfidfCoder.fit(texts, labels, list(TRIGGERS) + ["A01.0"])
    with pytest.raises(ClemError, match="TF-IDF features"):
        TfidfCoder.fit(["one note"], [["A01.0"]], ["A01.0"])  # nothing left after min_df=2
