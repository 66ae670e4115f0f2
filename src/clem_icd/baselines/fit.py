"""The one way the TF-IDF baseline is fitted on a prepared dataset, for `clem-icd train` with a
TF-IDF recipe and for the baseline column of `clem-icd evaluate`:

fit on train, tune the global threshold on val (argmax of micro-F1, as for the neural coder),
compute val metrics at it, and save the model folder with metrics.json. The folder records the
code systems of the dataset's codes table, the dataset's text cleaning (applied to the notes it
is later given) and the dataset's fingerprint, so that a saved baseline can be checked against
the dataset it is used with (`matches`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from clem_icd.baselines.tfidf import TfidfCoder, tfidf_options
from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.fingerprint import dataset_fingerprint  # one definition, also for training
from clem_icd.data.labels import targets_matrix
from clem_icd.data.text import text_cleaning_of
from clem_icd.errors import ClemError
from clem_icd.evaluation.metrics import compute_metrics, tune_threshold
from clem_icd.evaluation.report import json_value


def dataset_text_cleaning(dataset: PreparedDataset) -> str:
    """What the dataset's notes went through (its manifest's clean_text option)."""
    return text_cleaning_of((dataset.manifest or {}).get("options") or {})


def matches(model: TfidfCoder, dataset: PreparedDataset, options: Mapping | None,
            fingerprint: str | None = None) -> bool:
    """Whether `model` was fitted by `fit_tfidf_baseline` on this dataset with these options."""
    fingerprint = fingerprint if fingerprint is not None else dataset_fingerprint(dataset)
    recorded = (model.dataset or {}).get("fingerprint")
    return (fingerprint is not None and recorded == fingerprint
            and model.config == tfidf_options(options) and model.codes == dataset.code_list
            and model.text_cleaning == dataset_text_cleaning(dataset))


def fit_tfidf_baseline(dataset: PreparedDataset, options: Mapping | None = None,
                       output_dir: Path | str | None = None, *,
                       n_jobs: int | None = None) -> tuple[TfidfCoder, dict]:
    """Fit the baseline on `dataset`'s train split with `options` (see `tfidf_options`), tune
    its threshold on val, and save it to `output_dir` (when given) with metrics.json.

    Returns the model and the metrics: {"val": metrics at the tuned threshold (None without a
    val split, when the threshold stays 0.5), "threshold", "train_seconds", "dataset"}."""
    config = tfidf_options(options)
    train, val = dataset.split("train"), dataset.split("val")
    if train.is_empty():
        raise ClemError(f"{dataset.path}: no documents in the train split")
    codes = dataset.code_list
    fingerprint = dataset_fingerprint(dataset)
    started = time.perf_counter()
    model = TfidfCoder.fit(train["text"].to_list(), train["codes"].to_list(), codes,
                           descriptions=dataset.codes["description"].to_list(),
                           code_systems=dataset.codes["system"].to_list(), config=config, n_jobs=n_jobs,
                           text_cleaning=dataset_text_cleaning(dataset))
    seconds = time.perf_counter() - started
    model.dataset = {"fingerprint": fingerprint, "path": str(dataset.path)}
    val_metrics = None
    if not val.is_empty():
        val_scores = model.predict_proba(val["text"].to_list())
        val_targets = targets_matrix(val["codes"].to_list(), codes)
        model.threshold = tune_threshold(val_scores, val_targets)
        val_metrics = {k: json_value(v) for k, v in
                       compute_metrics(val_scores, val_targets, model.threshold).items()}
    metrics = {"val": val_metrics, "threshold": model.threshold, "train_seconds": seconds,
               "dataset": model.dataset}
    if output_dir is not None:
        model.save_pretrained(output_dir, metrics=metrics)
    return model, metrics

