"""The one TF-IDF baseline path: fit on train, tune on val, save with metrics and code systems;
the predictor interface it shares with the neural coder; the evaluate cache keyed by dataset."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
from rich.console import Console

from clem_icd.baselines.fit import dataset_fingerprint, fit_tfidf_baseline
from clem_icd.baselines.tfidf import TfidfCoder
from clem_icd.codes.dictionary import CodeDictionary
from clem_icd.codes.systems import CodeSystem
from clem_icd.data.dataset import DatasetWriter, PreparedDataset
from clem_icd.errors import ClemError
from clem_icd.inference.fhir import bundle_entries
from clem_icd.inference.predictor import PredictOptions
from clem_icd.inference.run import code_records

FILLER = ("patient", "admitted", "stable", "overnight", "reports", "improved", "medication",
          "follow", "clinic", "review", "normal", "exam", "today", "pain", "mild")
# ICD-9: 96.04 (intubation, a procedure) and 486 (pneumonia, a diagnosis). Spelled like this,
# ICD-10 guessing gets both wrong (96.04 -> icd10cm, 486 -> icd10pcs).
ICD9 = {"96.04": ("zorblax", CodeSystem.ICD9PCS), "486": ("quintessa", CodeSystem.ICD9CM),
        "401.9": ("plumbrite", CodeSystem.ICD9CM)}
ICD10 = {"I10": ("vextrane", CodeSystem.ICD10CM), "J18.9": ("gryphonic", CodeSystem.ICD10CM),
         "0BH17EZ": ("tubulant", CodeSystem.ICD10PCS)}


def write_dataset(out, codes: dict, n: int = 90, seed: int = 0, clean_text: bool = False):
    """A prepared dataset whose codes are each announced by one made-up trigger word; with
    `clean_text`, its manifest says the notes went through the Edin 2023 cleaning (these
    lower-case words are what that cleaning gives)."""
    rng = np.random.default_rng(seed)
    names = list(codes)
    ids, texts, labels = [], [], []
    for i in range(n):
        chosen = [names[j] for j in sorted(rng.choice(len(names), size=int(rng.integers(1, 3)), replace=False))]
        words = list(rng.choice(FILLER, size=int(rng.integers(5, 12))))
        for code in chosen:
            words.insert(int(rng.integers(len(words) + 1)), codes[code][0])
        ids.append(f"doc-{i:03d}")
        texts.append(" ".join(words))
        labels.append(chosen)
    splits = ["train"] * (n * 2 // 3) + ["val"] * (n // 6) + ["test"] * (n - n * 2 // 3 - n // 6)
    with DatasetWriter(out) as writer:
        writer.write(ids, texts, labels, splits)
        writer.finish(code_systems={c: system for c, (_, system) in codes.items()}, dictionary=CodeDictionary(),
                      manifest={"source": "test", "options": {"seed": seed, "clean_text": clean_text},
                                "inputs": []})
    return out


@pytest.fixture(scope="module")
def icd9_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("icd9") / "data", ICD9)


@pytest.fixture(scope="module")
def icd10_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("icd10") / "data", ICD10, seed=1)


def test_fit_tunes_on_val_and_saves_metrics(icd9_dir, tmp_path):
    dataset = PreparedDataset.load(icd9_dir)
    model, metrics = fit_tfidf_baseline(dataset, {"kind": "tfidf", "C": 10.0}, tmp_path / "m", n_jobs=1)
    assert model.config["C"] == 10.0  # recipe options are used; `kind` is not a hyperparameter
    assert model.codes == dataset.code_list
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert saved["threshold"] == metrics["threshold"] == model.threshold
    assert saved["val"]["f1_micro"] == metrics["val"]["f1_micro"] > 0.9
    assert saved["dataset"]["fingerprint"] == dataset_fingerprint(dataset)
    assert TfidfCoder.from_pretrained(tmp_path / "m").threshold == model.threshold
    with pytest.raises(ClemError, match="unknown TF-IDF option"):
        fit_tfidf_baseline(dataset, {"alpha": 1.0})


def test_icd9_code_systems_are_stored_and_used(icd9_dir, tmp_path):
    dataset = PreparedDataset.load(icd9_dir)
    fit_tfidf_baseline(dataset, None, tmp_path / "m", n_jobs=1)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    expected = {code: str(system) for code, (_, system) in ICD9.items()}
    assert dict(zip(config["codes"], config["code_systems"])) == expected

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a folder that records its systems loads silently
        model = TfidfCoder.from_pretrained(tmp_path / "m")
    (codes,) = model.predict(["patient zorblax quintessa stable"], threshold=0.0)
    assert {c["code"]: c["system"] for c in codes} == expected
    (record,) = code_records(model.note_predictor(PredictOptions(top_k=2)),
                             [_record("n1", "patient zorblax quintessa stable")])
    resources = {e["resource"]["code"]["coding"][0]["code"]: e["resource"]["resourceType"]
                 for e in bundle_entries(record)}
    assert resources == {"96.04": "Procedure", "486": "Condition"}


def test_old_folders_without_code_systems_guess_icd10_with_a_warning(icd9_dir, tmp_path):
    fit_tfidf_baseline(PreparedDataset.load(icd9_dir), None, tmp_path / "m", n_jobs=1)
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    del config["code_systems"]
    config_path.write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="refit"):
        model = TfidfCoder.from_pretrained(tmp_path / "m")
    assert model.code_systems[model.codes.index("96.04")] == "icd10cm"  # the old guess


def test_a_baseline_fitted_on_cleaned_text_reads_new_notes_cleaned(icd9_dir, tmp_path):
    """The dataset's text cleaning is recorded in the folder and applied to new notes, as the
    neural coder does: a raw note scores exactly as its cleaned form."""
    from clem_icd.baselines.fit import matches
    from clem_icd.data.text import clean_text

    dataset = PreparedDataset.load(write_dataset(tmp_path / "data", ICD10, clean_text=True))
    model, _ = fit_tfidf_baseline(dataset, None, tmp_path / "model", n_jobs=1)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["text_cleaning"] == "edin2023"
    raw = "Patient VEXTRANE_gryphonic 12 noted; Tubulant-2 today 3 4 stable."
    cleaned = clean_text(raw)
    assert cleaned == "patient vextrane gryphonic noted tubulant today stable"
    for loaded in (model, TfidfCoder.from_pretrained(tmp_path / "model")):
        assert np.array_equal(loaded.predict_proba([raw]), loaded.predict_proba([cleaned]))
        assert loaded.predict([raw], threshold=0.0) == loaded.predict([cleaned], threshold=0.0)
    # Read raw, the note is other words (one token 'vextrane_gryphonic', the bigrams with 12):
    # what the check above would catch.
    model.text_cleaning = "none"
    assert not np.array_equal(model.predict_proba([raw]), model.predict_proba([cleaned]))
    assert not matches(model, dataset, None)  # evaluate's cache refits a baseline that reads otherwise
    model.text_cleaning = "edin2023"
    assert matches(model, dataset, None)
    # A dataset of raw text: nothing is cleaned.
    raw_model, _ = fit_tfidf_baseline(PreparedDataset.load(icd9_dir), None, None, n_jobs=1)
    assert raw_model.text_cleaning == "none"


def test_predict_has_the_shape_of_the_neural_coder(icd9_dir):
    dataset = PreparedDataset.load(icd9_dir)
    model, _ = fit_tfidf_baseline(dataset, None, None, n_jobs=1)
    text = "patient zorblax quintessa stable"
    probabilities = model.predict_proba([text])[0]
    (codes,) = model.predict([text], threshold=0.0)
    assert [c["code"] for c in codes] == [model.codes[j] for j in np.argsort(-probabilities, kind="stable")]
    assert set(codes[0]) == {"code", "system", "description", "score", "probability"}
    assert all(c["probability"] == c["score"] for c in codes)  # its scores are probabilities
    assert [c["score"] for c in codes] == sorted((c["score"] for c in codes), reverse=True)
    assert len(model.predict([text], threshold=0.0, top_k=1)[0]) == 1
    assert model.predict([text], threshold=1.0) == [[]]
    notes = model.note_predictor(PredictOptions(threshold=0.0, top_k=2))([text])
    assert notes == [{"codes": model.predict([text], threshold=0.0, top_k=2)[0], "truncated": False}]
    with pytest.raises(ClemError, match="TF-IDF"):
        model.note_predictor(PredictOptions(explain="attention"))
    with pytest.raises(TypeError):
        model.predict(text)


def _evaluate(model_dir, data_dir, out, **options):
    from clem_icd.evaluation.evaluate import evaluate

    return evaluate(model_dir, data_dir, "test", out, console=Console(file=io.StringIO()), **options)


def test_evaluate_refits_the_cached_baseline_for_another_dataset(icd9_dir, icd10_dir, tmp_path):
    fit_tfidf_baseline(PreparedDataset.load(icd9_dir), None, tmp_path / "model", n_jobs=1)
    out = tmp_path / "eval"
    _evaluate(tmp_path / "model", icd9_dir, out)
    cache = out / "baseline_tfidf"
    assert sorted(TfidfCoder.from_pretrained(cache).codes) == sorted(ICD9)
    _evaluate(tmp_path / "model", icd10_dir, out)
    refitted = TfidfCoder.from_pretrained(cache)
    assert sorted(refitted.codes) == sorted(ICD10)
    assert refitted.dataset["fingerprint"] == dataset_fingerprint(PreparedDataset.load(icd10_dir))


def test_evaluate_reuses_the_baseline_only_for_the_same_dataset_and_options(icd9_dir, tmp_path, monkeypatch):
    import clem_icd.baselines.fit as fit

    fit_tfidf_baseline(PreparedDataset.load(icd9_dir), None, tmp_path / "model", n_jobs=1)
    out = tmp_path / "eval"
    _evaluate(tmp_path / "model", icd9_dir, out)
    calls = []
    original = fit.fit_tfidf_baseline
    monkeypatch.setattr(fit, "fit_tfidf_baseline", lambda *a, **k: calls.append(a) or original(*a, **k))
    _evaluate(tmp_path / "model", icd9_dir, out)
    assert calls == []  # same dataset, same (default) options: reused
    _evaluate(tmp_path / "model", icd9_dir, out, baseline_options={"C": 1.0})
    assert len(calls) == 1
    assert TfidfCoder.from_pretrained(out / "baseline_tfidf").config["C"] == 1.0


def _record(note_id: str, text: str):
    from clem_icd.inference.inputs import NoteRecord

    return NoteRecord(id=note_id, text=text, error=None)


def test_evaluate_cli_fits_the_baseline_with_the_recipe_given(icd9_dir, tmp_path, run):
    fit_tfidf_baseline(PreparedDataset.load(icd9_dir), None, tmp_path / "model", n_jobs=1)
    recipe = tmp_path / "tfidf.yaml"
    recipe.write_text("model:\n  kind: tfidf\n  C: 3.0\n  min_df: 1\n")
    out = tmp_path / "eval"
    code, _, err = run("evaluate", "--model", tmp_path / "model", "--data", icd9_dir, "--split", "test",
                       "--out", out, "--baseline-recipe", recipe)
    assert code in (0, None), err
    config = TfidfCoder.from_pretrained(out / "baseline_tfidf").config
    assert (config["C"], config["min_df"]) == (3.0, 1)
    code, _, err = run("evaluate", "--model", tmp_path / "model", "--data", icd9_dir, "--split", "test",
                       "--out", out, "--baseline-recipe", "codiesp/minilm_cross_desc")
    assert code == 2 and "model.kind is clem_icd, not tfidf" in err and len(err.strip().splitlines()) == 1
