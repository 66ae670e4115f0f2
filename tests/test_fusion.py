"""Rank fusion (clem_icd.fusion): the scores against a hand computation, deterministic ranks,
weights, the saved folder, the errors, and `clem-icd fuse` / `predict` / `evaluate --fuse-with`
end to end on a tiny prepared dataset."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from rich.console import Console

from clem_icd.baselines.fit import fit_tfidf_baseline
from clem_icd.codes.dictionary import CodeDictionary
from clem_icd.codes.systems import CodeSystem
from clem_icd.data.dataset import DatasetWriter, PreparedDataset
from clem_icd.errors import ClemError
from clem_icd.fusion import FusedModel
from clem_icd.inference.predictor import PredictOptions
from clem_icd.loading import load_model


class Stub:
    """A model with known probabilities: text "note<i>" gets row i of `rows`."""

    def __init__(self, codes, rows, threshold=0.5):
        self.codes = list(codes)
        self.rows = np.asarray(rows, dtype=np.float32)
        self.threshold = threshold
        self.code_systems = ["icd10cm"] * len(codes)
        self.descriptions = [f"about {c}" for c in codes]
        self.calls = 0

    def predict_proba(self, texts):
        self.calls += 1
        return self.rows[[int(t.removeprefix("note")) for t in texts]]

    def note_predictor(self, options):
        def predict_notes(texts):
            return [{"codes": [{"code": self.codes[j], "probability": float(row[j])}
                               for j in np.argsort(-row, kind="stable")
                               if row[j] > options.threshold][:options.top_k], "truncated": False}
                    for row in self.predict_proba(texts)]
        return predict_notes


# Two members sharing b and c; a is only A's, d only B's.
A = Stub(["a", "b", "c"], [[0.9, 0.5, 0.1], [0.2, 0.3, 0.7]])
B = Stub(["b", "c", "d"], [[0.2, 0.8, 0.6], [0.9, 0.1, 0.4]])
NOTES = ["note0", "note1"]


def _scores(model, texts=NOTES) -> list[dict]:
    return [dict(zip(model.codes, map(float, row))) for row in model.predict_proba(texts)]


def test_rrf_scores_equal_a_hand_computation():
    fused = FusedModel([A, B], [1.0, 2.0], k=60)
    assert fused.codes == ["a", "b", "c", "d"]  # the first member's order, then the others' own codes
    # note0 ranks: A a1 b2 c3, B c1 d2 b3; note1: A c1 b2 a3, B b1 d2 c3. Normaliser: (1 + 2) / 61.
    norm = 3 / 61
    expected = [{"a": 1 / 61, "b": 1 / 62 + 2 / 63, "c": 1 / 63 + 2 / 61, "d": 2 / 62},
                {"a": 1 / 63, "b": 1 / 62 + 2 / 61, "c": 1 / 61 + 2 / 63, "d": 2 / 62}]
    for got, want in zip(_scores(fused), expected):
        assert got == pytest.approx({code: value / norm for code, value in want.items()}, rel=1e-6)
    best_everywhere = FusedModel([A, A], k=60).predict_proba(["note0"])[0]
    assert best_everywhere[0] == 1.0 and (best_everywhere >= 0).all()  # in [0, 1], 1 = best in every member
    (codes,) = fused.predict(["note0"], threshold=0.0)
    assert [c["code"] for c in codes] == ["c", "b", "d", "a"]
    # A rank score is reported as a score, never as a probability.
    assert fused.score_kind == "rank score"
    assert codes[0] == {"code": "c", "system": "icd10cm", "description": "about c",
                        "score": pytest.approx((1 / 63 + 2 / 61) / norm, rel=1e-6)}


def test_mean_is_the_weighted_mean_of_the_probabilities():
    fused = FusedModel([A, B], [1.0, 3.0], method="mean")
    (note0, _) = _scores(fused)
    assert note0 == pytest.approx({"a": 0.9 / 4, "b": (0.5 + 3 * 0.2) / 4, "c": (0.1 + 3 * 0.8) / 4,
                                   "d": 3 * 0.6 / 4}, rel=1e-6)
    # A mean of probabilities is a probability, and is reported as one.
    assert fused.score_kind == "probability"
    (codes, _) = fused.predict(NOTES, threshold=0.0)
    assert {c["code"]: c["probability"] for c in codes} == {c["code"]: c["score"] for c in codes} == \
           pytest.approx(note0, rel=1e-6)
    # A mean over a member that gives rank scores averages ranks: no probability either.
    over_ranks = FusedModel([A, FusedModel([A, B])], method="mean")
    assert over_ranks.score_kind == "rank score"
    assert all("probability" not in c and "score" in c for c in over_ranks.predict(NOTES, threshold=0.0)[0])


def test_ranks_are_deterministic_and_ignore_the_members_column_order():
    rng = np.random.default_rng(0)
    codes_a, codes_b = [f"A{i}" for i in range(30)], [f"A{i}" for i in range(10, 30)] + [f"B{i}" for i in range(15)]
    rows_a, rows_b = rng.random((5, 30)), rng.random((5, 35))
    rows_a[:, :4] = 0.5  # ties inside a member: broken by its column order, every time
    texts = [f"note{i}" for i in range(5)]
    fused = FusedModel([Stub(codes_a, rows_a), Stub(codes_b, rows_b)])
    first = fused.predict(texts, threshold=0.0)
    assert fused.predict(texts, threshold=0.0) == first
    assert np.array_equal(fused.predict_proba(texts), fused.predict_proba(texts))

    # Member B's codes in another order: the same scores and the same ranking (codes of equal
    # fused score, e.g. ranks 3 and 5 swapped between the members, keep the first member's order).
    order = rng.permutation(35)
    permuted = FusedModel([Stub(codes_a, rows_a), Stub([codes_b[j] for j in order], rows_b[:, order])])
    assert _scores(permuted, texts) == _scores(fused, texts)
    assert permuted.predict(texts, threshold=0.0) == first
    # Member A's codes in another order (its tied codes kept in their order): the same scores, so
    # the same ranking up to the order within equal scores, which follows A's column order.
    order = np.r_[rng.permutation(np.arange(4, 30)), np.arange(4)]
    permuted = FusedModel([Stub([codes_a[j] for j in order], rows_a[:, order]), Stub(codes_b, rows_b)])
    assert _scores(permuted, texts) == _scores(fused, texts)
    for note, reference in zip(permuted.predict(texts, threshold=0.0), first):
        assert [c["score"] for c in note] == [c["score"] for c in reference]


def test_weight_zero_on_a_member_reproduces_the_other_members_ranking():
    rng = np.random.default_rng(1)
    codes_a, codes_b = [f"X{i}" for i in range(20)], [f"X{i}" for i in range(5, 40)]
    member_a, member_b = Stub(codes_a, rng.random((4, 20))), Stub(codes_b, rng.random((4, 35)))
    texts = [f"note{i}" for i in range(4)]
    for method in ("rrf", "mean"):
        fused = FusedModel([member_a, member_b], [0.0, 1.0], method=method)
        for note, row in zip(fused.predict(texts, threshold=0.0), member_b.rows):
            assert [c["code"] for c in note] == [codes_b[j] for j in np.argsort(-row, kind="stable")]


def test_note_predictor_gives_what_predict_gives_and_refuses_evidence():
    fused = FusedModel([A, B], [1.0, 2.0], threshold=0.6)
    options = PredictOptions(top_k=3)
    assert fused.note_predictor(options)(NOTES) == [{"codes": codes, "truncated": False}
                                                    for codes in fused.predict(NOTES, top_k=3)]
    assert fused.note_predictor(PredictOptions(threshold=0.0))(NOTES) == [
        {"codes": codes, "truncated": False} for codes in fused.predict(NOTES, threshold=0.0)]
    with pytest.raises(ClemError, match="--explain is not supported for a fused model"):
        fused.note_predictor(PredictOptions(explain="attention"))


def test_bad_settings_are_refused():
    with pytest.raises(ClemError, match="2 weights for 1 members"):
        FusedModel([A], [1.0, 1.0])
    with pytest.raises(ClemError, match="not all 0"):
        FusedModel([A, B], [0.0, 0.0])
    with pytest.raises(ClemError, match="method must be one of rrf, mean"):
        FusedModel([A, B], method="max")
    with pytest.raises(ClemError, match="k must be"):
        FusedModel([A, B], k=-1)


# ---------------------------------------------------------------- saved folders

FILLER = ("patient", "admitted", "stable", "overnight", "reports", "improved", "medication", "clinic")
TRIGGERS = {"I10": "vextrane", "J18.9": "gryphonic", "E11.9": "sugarpine", "0BH17EZ": "tubulant"}
SYSTEMS = {"I10": CodeSystem.ICD10CM, "J18.9": CodeSystem.ICD10CM, "E11.9": CodeSystem.ICD10CM,
           "0BH17EZ": CodeSystem.ICD10PCS}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A prepared dataset whose codes are each announced by a made-up trigger word (with noise:
    a trigger is sometimes left out, so that the members differ)."""
    rng = np.random.default_rng(0)
    names, n = list(TRIGGERS), 120
    ids, texts, labels = [], [], []
    for i in range(n):
        chosen = sorted(rng.choice(names, size=int(rng.integers(1, 3)), replace=False).tolist())
        words = list(rng.choice(FILLER, size=int(rng.integers(5, 12))))
        for code in chosen:
            if rng.random() > 0.2:
                words.insert(int(rng.integers(len(words) + 1)), TRIGGERS[code])
        ids.append(f"S{i:04d}-1")
        texts.append(" ".join(words))
        labels.append(chosen)
    splits = ["train"] * 80 + ["val"] * 20 + ["test"] * 20
    out = tmp_path_factory.mktemp("fusion") / "data"
    with DatasetWriter(out) as writer:
        writer.write(ids, texts, labels, splits)
        writer.finish(code_systems=SYSTEMS, dictionary=CodeDictionary(),
                      manifest={"source": "test", "options": {}, "inputs": []})
    return out


@pytest.fixture(scope="module")
def members(data_dir, tmp_path_factory):
    """Two TF-IDF models of the dataset with other hyperparameters, the second also with a
    subfolder (as a training or evaluation leaves) that a fused copy must not take along."""
    folder = tmp_path_factory.mktemp("members")
    dataset = PreparedDataset.load(data_dir)
    fit_tfidf_baseline(dataset, None, folder / "words", n_jobs=1)
    fit_tfidf_baseline(dataset, {"ngram_range": [1, 1], "C": 1.0, "min_df": 1}, folder / "unigrams", n_jobs=1)
    (folder / "unigrams" / "test").mkdir()
    (folder / "unigrams" / "test" / "model_ranking.tsv").write_text("not a model file\n")
    return folder / "words", folder / "unigrams"


def test_save_and_load_round_trip(members, tmp_path):
    first, second = members
    fused = FusedModel([load_model(first), load_model(second)], [1.0, 0.5], k=30, threshold=0.42,
                       sources=members)
    texts = ["patient vextrane stable", "gryphonic tubulant", "nothing to see"]
    fused.save_pretrained(tmp_path / "fused")
    config = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert {k: config[k] for k in ("model_type", "method", "k", "weights", "threshold", "members")} == {
        "model_type": "fusion", "method": "rrf", "k": 30.0, "weights": [1.0, 0.5], "threshold": 0.42,
        "members": ["members/0", "members/1"]}
    assert not (tmp_path / "fused" / "members" / "1" / "test").exists()  # model files only
    loaded = load_model(tmp_path / "fused")
    assert isinstance(loaded, FusedModel) and loaded.threshold == 0.42
    assert np.array_equal(loaded.predict_proba(texts), fused.predict_proba(texts))
    assert loaded.predict(texts) == fused.predict(texts)
    # A fused folder is a member like any other (nested, copied with its own members).
    FusedModel([loaded, load_model(first)], sources=[tmp_path / "fused", first]).save_pretrained(tmp_path / "nested")
    nested = load_model(tmp_path / "nested")
    assert nested.codes == fused.codes and nested.predict_proba(texts).shape == (3, len(fused.codes))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_errors_name_the_file_and_field(members, tmp_path):
    first, second = members
    fused = FusedModel([load_model(first), load_model(second)], sources=members)
    folder = fused.save_pretrained(tmp_path / "fused")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())

    (folder / "members" / "1").rename(folder / "elsewhere")
    with pytest.raises(ClemError) as error:
        load_model(folder)
    assert str(error.value) == (f"{folder / 'members' / '1'}: member model folder not found "
                                f"(named by {config_path} field 'members'[1])")
    (folder / "elsewhere").rename(folder / "members" / "1")
    (folder / "members" / "1" / "model.safetensors").unlink()
    with pytest.raises(ClemError, match=f"^{folder / 'members' / '1' / 'model.safetensors'}: not found"):
        load_model(folder)

    for field, value, message in [("weights", [1.0], "1 weights for 2 members"),
                                  ("weights", "1,1", "field 'weights' must be a list of numbers"),
                                  ("method", "vote", "method must be one of rrf, mean"),
                                  ("members", ["/tmp/x", "members/1"], "field 'members': '/tmp/x' is not a folder"),
                                  ("threshold", 2, "threshold must be a number in \\[0, 1\\]")]:
        config_path.write_text(json.dumps({**config, field: value}))
        with pytest.raises(ClemError, match=f"^{config_path}: .*{message}"):
            load_model(folder)
    config_path.write_text(json.dumps({k: v for k, v in config.items() if k != "k"}))
    with pytest.raises(ClemError, match=f"^{config_path}: field 'k' is missing$"):
        load_model(folder)

    with pytest.raises(ClemError, match="is or contains member folder"):
        fused.save_pretrained(first)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ClemError, match="folder exists and is not a fused model"):
        fused.save_pretrained(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_a_neural_member_reads_notes_with_its_own_options(tmp_path):
    """A neural coder and a TF-IDF model: the fused note predictor passes the reading options on
    (a long note is truncated, or read in windows) and matches predict_proba."""
    import torch
    from model_fixtures import minilm_path, tiny_bert

    from clem_icd.baselines.tfidf import TfidfCoder
    from clem_icd.model import ICDCoder

    torch.manual_seed(0)
    coder = ICDCoder.from_encoder(str(minilm_path()), ["I10", "J18.9", "E11.9"], encoder_config=tiny_bert(),
                                  max_length=64, code_systems=["icd10cm"] * 3)
    tfidf = TfidfCoder.fit(["vextrane noted", "gryphonic seen", "vextrane and tubulant", "nothing"] * 3,
                           [["I10"], ["J18.9"], ["I10", "0BH17EZ"], []] * 3, ["I10", "J18.9", "0BH17EZ"])
    fused = FusedModel([coder, tfidf])
    assert fused.codes == ["I10", "J18.9", "E11.9", "0BH17EZ"] and fused.code_systems[3] == "icd10pcs"
    texts = ["vextrane noted today", "gryphonic " * 200]
    truncating = fused.note_predictor(PredictOptions(threshold=0.0))(texts)
    assert [note["truncated"] for note in truncating] == [False, True]
    for note, row in zip(truncating, fused.predict_proba(texts)):
        assert {c["code"]: c["score"] for c in note["codes"]} == \
               pytest.approx(dict(zip(fused.codes, map(float, row))), abs=1e-6)
    windowed = fused.note_predictor(PredictOptions(threshold=0.0, window_stride=40))(texts)
    assert [note["truncated"] for note in windowed] == [False, False]
    nested = FusedModel([tfidf, fused], [1.0, 2.0], method="mean")  # the options reach a member's members
    assert [note["truncated"] for note in nested.note_predictor(PredictOptions())(texts)] == [False, True]
    assert [note["truncated"] for note in nested.note_predictor(PredictOptions(window_stride=40))(texts)] == \
           [False, False]
    (note, _) = nested.note_predictor(PredictOptions(threshold=0.0))(texts)
    assert {c["code"]: c["score"] for c in note["codes"]} == \
           pytest.approx(dict(zip(nested.codes, map(float, nested.predict_proba(texts)[0]))), abs=1e-6)


# ---------------------------------------------------------------- the command line


def test_fuse_predict_and_evaluate_with_fuse_with_end_to_end(members, data_dir, tmp_path, run):
    first, second = members
    fused_dir = tmp_path / "fused"
    status, out, err = run("fuse", "--model", first, "--model", second, "--data", data_dir, "--out", fused_dir)
    assert status in (0, None), err
    assert "fused (rrf)" in out and "val micro-F1" in out and "member 2" in out
    assert f"member 1: {first}" in err and f"member 2: {second}" in err
    metrics = json.loads((fused_dir / "metrics.json").read_text())
    assert metrics["threshold"] == json.loads((fused_dir / "config.json").read_text())["threshold"]
    assert 0 <= metrics["val"]["f1_micro"] <= 1 and len(metrics["members"]) == 2
    assert metrics["members"][0]["folder"] == str(first)

    notes = tmp_path / "notes.jsonl"
    notes.write_text("".join(json.dumps({"id": f"S900{i}-1", "text": text}) + "\n"
                             for i, text in enumerate(["patient vextrane stable", "gryphonic and tubulant"])))
    status, out, err = run("predict", "--model", fused_dir, notes, "--threshold", "0", "--top-k", "2")
    assert status in (0, None), err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["codes"][0]["code"] for r in records][0] == "I10" and all(len(r["codes"]) == 2 for r in records)
    status, out, err = run("predict", "--model", fused_dir, notes, "--format", "codiesp")
    assert status in (0, None) and len(out.splitlines()) == 2 * len(TRIGGERS)
    status, _, err = run("predict", "--model", fused_dir, notes, "--explain", "attention")
    assert status == 2 and err.strip() == ("error: --explain is not supported for a fused model (evidence "
                                           "would explain one member, not the fused ranking); explain with "
                                           "one of its member models")

    # evaluate --fuse-with: the fused column equals evaluating the fused folder itself (same
    # weights; the threshold tuned on the same val split).
    status, _, err = run("evaluate", "--model", first, "--data", data_dir, "--split", "test", "--out",
                         tmp_path / "eval", "--baseline", "none", "--fuse-with", second)
    assert status in (0, None), err
    status, _, err = run("evaluate", "--model", fused_dir, "--data", data_dir, "--split", "test", "--out",
                         tmp_path / "eval_fused", "--baseline", "none")
    assert status in (0, None), err
    results = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"]
    direct = json.loads((tmp_path / "eval_fused" / "metrics.json").read_text())["results"]
    threshold = metrics["threshold"]
    own = json.loads((first / "metrics.json").read_text())["threshold"]
    assert set(results) == {f"model @ {own:.2f}", "model @ 0.50", f"fused @ {threshold:.2f}", "fused @ 0.50"}
    assert results[f"fused @ {threshold:.2f}"] == direct[f"model @ {threshold:.2f}"]
    assert (tmp_path / "eval" / "fused_ranking.tsv").read_text() == \
           (tmp_path / "eval_fused" / "model_ranking.tsv").read_text()

    status, _, err = run("fuse", "--model", first, "--model", second, "--weight", "1", "--data", data_dir,
                         "--out", tmp_path / "x")
    assert status == 2 and "--weight: 1 weight(s) for 2 --model folders" in err
    status, _, err = run("fuse", "--model", first, "--model", second, "--method", "max", "--data", data_dir,
                         "--out", tmp_path / "x")
    assert status == 2 and err.strip() == "error: --method must be one of rrf, mean, got 'max'"
    status, _, err = run("evaluate", "--model", first, "--data", data_dir, "--out", tmp_path / "x",
                         "--fuse-with", second, "--fuse-weight", "-1")
    assert status == 2 and err.strip() == "error: --fuse-weight must be a finite number of at least 0, got -1.0"
    assert not (tmp_path / "x").exists()
    status, _, err = run("fuse", "--model", first, "--model", tmp_path / "missing", "--data", data_dir,
                         "--out", tmp_path / "x")
    assert status == 2 and err.strip() == f"error: {tmp_path / 'missing' / 'config.json'}: not found " \
                                          f"(is {tmp_path / 'missing'} a trained model folder?)"


def test_evaluate_scores_the_model_once_when_fusing(members, data_dir, tmp_path, monkeypatch):
    """The fused column re-uses the model's own test scores: every member reads val once (to
    tune) and test once."""
    from clem_icd.baselines.tfidf import TfidfCoder
    from clem_icd.evaluation.evaluate import evaluate

    calls = []
    original = TfidfCoder.predict_proba
    monkeypatch.setattr(TfidfCoder, "predict_proba",
                        lambda self, texts: calls.append((self.config["ngram_range"][1], len(texts))) or original(self, texts))
    first, second = members
    results = evaluate(first, data_dir, "test", tmp_path / "eval", baseline="none", fuse_with=second,
                       fuse_weight=2.0, console=Console(file=io.StringIO()))
    assert sorted(calls) == [(1, 20), (1, 20), (2, 20), (2, 20)]  # (member, notes): val and test each
    assert any(name.startswith("fused @ ") for name in results)
