"""The config.json of every saved model folder (coder, TF-IDF baseline, fused model; the
description matcher in test_matching) records the clem-icd version that wrote it, and loading
refuses a key this version does not know with one line naming the key and both versions, instead
of dropping it. Folders written before the version was recorded load when every key is known."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clem_icd.baselines.tfidf import TfidfCoder
from clem_icd.errors import ClemError
from clem_icd.fusion import FusedModel
from clem_icd.loading import load_model
from clem_icd.version import __version__

TEXTS = ["vextrane noted", "gryphonic seen", "vextrane and tubulant", "nothing"] * 3
LABELS = [["I10"], ["J18.9"], ["I10", "0BH17EZ"], []] * 3
CODES = ["I10", "J18.9", "0BH17EZ"]


def _tfidf(folder):
    return TfidfCoder.fit(TEXTS, LABELS, CODES, n_jobs=1).save_pretrained(folder)


def _coder(folder):
    import torch
    from model_fixtures import minilm_path, tiny_bert

    from clem_icd.model import ICDCoder

    torch.manual_seed(0)
    coder = ICDCoder.from_encoder(str(minilm_path()), CODES, encoder_config=tiny_bert(), max_length=64)
    coder.save_pretrained(folder)
    return folder


def _fused(folder):
    members = [_tfidf(folder.parent / "member-a"), _tfidf(folder.parent / "member-b")]
    FusedModel([load_model(m) for m in members], [1.0, 2.0], sources=members).save_pretrained(folder)
    return folder


@pytest.fixture(params=["coder", "tfidf", "fusion"])
def folder(request, tmp_path):
    return {"coder": _coder, "tfidf": _tfidf, "fusion": _fused}[request.param](tmp_path / "model")


def _scores(folder) -> np.ndarray:
    return load_model(folder).predict_proba(["vextrane noted today", "gryphonic"])


def _rewrite(folder, change) -> dict:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))
    return config


def test_a_saved_folder_records_the_version_that_wrote_it(folder):
    assert json.loads((folder / "config.json").read_text())["clem_icd_version"] == __version__
    assert _scores(folder).shape == (2, len(CODES))


def test_a_key_this_version_does_not_know_stops_the_load_naming_key_and_versions(folder):
    _rewrite(folder, lambda config: config.update(clem_icd_version="9.9.9", new_setting=1))
    with pytest.raises(ClemError) as error:
        load_model(folder)
    assert str(error.value) == (f"{folder / 'config.json'}: unknown key 'new_setting' (written by clem-icd "
                                f"9.9.9; this is clem-icd {__version__}): upgrade clem-icd")
    # No version recorded (written by hand, or by a version before the field): said so.
    _rewrite(folder, lambda config: config.pop("clem_icd_version"))
    with pytest.raises(ClemError, match=r"unknown key 'new_setting' \(written by an unknown clem-icd version "
                                        r"\(none recorded\); this is clem-icd"):
        load_model(folder)


def test_a_folder_written_before_the_version_field_still_loads(folder):
    before = _scores(folder)
    _rewrite(folder, lambda config: config.pop("clem_icd_version"))
    assert np.array_equal(_scores(folder), before)


def test_an_unknown_tfidf_hyperparameter_in_a_folder_is_refused_too(tmp_path):
    folder = _tfidf(tmp_path / "tfidf")
    _rewrite(folder, lambda config: config["hyperparameters"].update(stop_words="english"))
    with pytest.raises(ClemError) as error:
        load_model(folder)
    assert str(error.value) == (f"{folder / 'config.json'}: unknown key 'hyperparameters.stop_words' (written by "
                                f"clem-icd {__version__}; this is clem-icd {__version__}): upgrade clem-icd")
    # A known hyperparameter of the wrong type: the one rule of recipe values, naming the field.
    _rewrite(folder, lambda config: config["hyperparameters"].pop("stop_words"))
    _rewrite(folder, lambda config: config["hyperparameters"].update(C="strong"))
    with pytest.raises(ClemError, match=r"config\.json: field 'hyperparameters\.C': got 'strong' \(str\), "
                                        r"expected a number$"):
        load_model(folder)
