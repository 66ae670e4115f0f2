"""`clem-icd evaluate`: a trained model on one split of a prepared dataset, with the protocol of
Edin et al. (2023), beside the TF-IDF baseline.

The decision threshold is the one tuned on val when the model was trained (argmax of micro-F1
over 100 values in [0, 1]); metrics are reported at it and at 0.5. Codes of the split that the
model does not know get score 0 (they count as misses, never silently dropped). With a second
model to fuse with (`fuse_with`), a "fused" column (clem_icd.fusion) is added, its threshold
tuned on val by the same rule.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console

from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.labels import targets_matrix
from clem_icd.errors import ClemError
from clem_icd.evaluation.metrics import compute_metrics, per_code_table
from clem_icd.evaluation.report import (
    json_value,
    render_metrics_table,
    write_codiesp_ranking,
    write_metrics_json,
    write_per_code_csv,
)
from clem_icd.loading import load_model

# Ranking files list every code of the label space, up to this many codes; a larger space (the
# whole code system, --unseen-codes: ~140,000 codes) lists each note's best RANKING_DEPTH, as
# 140,000 x notes lines would be, and ranks past 1,000 add less than 0.001 to a note's AP.
FULL_RANKING_CODES = 10_000
RANKING_DEPTH = 1_000


def label_space(model_codes: list[str], dataset_codes: list[str]) -> list[str]:
    """The model's codes, then the dataset's codes the model does not have."""
    known = set(model_codes)
    return list(model_codes) + [c for c in dataset_codes if c not in known]


def score_split(model, texts: list[str], n_codes: int) -> np.ndarray:
    scores = np.zeros((len(texts), n_codes), dtype=np.float32)
    scores[:, : len(model.codes)] = model.predict_proba(texts)
    return scores


def evaluate_model(model, name: str, dataset: PreparedDataset, split: str, out_dir: Path) -> dict:
    """Metrics of one model at its tuned threshold and at 0.5; writes its per-code CSV and the
    CodiEsp ranking file. Returns {"<name> @ <threshold>": metrics, "<name> @ 0.5": metrics}."""
    documents = dataset.split(split)
    codes = label_space(model.codes, dataset.code_list)
    started = time.perf_counter()
    scores = score_split(model, documents["text"].to_list(), len(codes))
    seconds = time.perf_counter() - started
    targets = targets_matrix(documents["codes"].to_list(), codes)
    threshold = float(model.threshold)
    tuned = compute_metrics(scores, targets, threshold)
    at_half = compute_metrics(scores, targets, 0.5)
    descriptions = dict(zip(dataset.code_list, dataset.codes["description"].to_list()))
    table = per_code_table(scores, targets, threshold, codes, [descriptions.get(c, "") for c in codes])
    write_per_code_csv(table, out_dir / f"{name}_per_code.csv")
    depth = None if len(codes) <= FULL_RANKING_CODES else RANKING_DEPTH
    write_codiesp_ranking(documents["id"].to_list(), scores, codes, out_dir / f"{name}_ranking.tsv", top_k=depth)
    write_metrics_json({**tuned, "threshold": threshold, "seconds": seconds,
                        "documents_per_second": len(documents) / max(seconds, 1e-9)},
                       out_dir / f"{name}_metrics.json")
    write_metrics_json(at_half, out_dir / f"{name}_metrics@0.5.json")
    return {f"{name} @ {threshold:.2f}": tuned, f"{name} @ 0.50": at_half}


def fit_baseline(dataset: PreparedDataset, cache: Path, options: dict | None = None):
    """The TF-IDF baseline of `dataset` with `options` (default hyperparameters when None),
    fitted by the one baseline path (clem_icd.baselines.fit: fit on train, threshold tuned on
    val). It is kept in `cache` and reused only when it was fitted on this very dataset (same
    fingerprint) with the same options; otherwise it is fitted again and replaces the cache."""
    from clem_icd.baselines.fit import dataset_fingerprint, fit_tfidf_baseline, matches
    from clem_icd.baselines.tfidf import TfidfCoder

    cache = Path(cache)
    if (cache / "config.json").is_file():
        try:
            with warnings.catch_warnings():  # an old cache without code systems is refitted anyway
                warnings.simplefilter("ignore", UserWarning)
                cached = TfidfCoder.from_pretrained(cache)
        except ClemError:  # damaged: fit it again (save_pretrained still refuses a non-TF-IDF folder)
            cached = None
        if cached is not None and matches(cached, dataset, options, dataset_fingerprint(dataset)):
            return cached
    model, _ = fit_tfidf_baseline(dataset, options, cache)
    return model


class LastScores:
    """A model that remembers its last `predict_proba` answer and gives it again for the same
    texts, so that the fused column re-uses the model's own test scores instead of running a
    neural model twice over the split. One answer only: a split's scores can be large."""

    def __init__(self, model):
        self.model = model
        self._texts: list[str] | None = None
        self._scores: np.ndarray | None = None

    def __getattr__(self, name: str):  # codes, threshold, code systems...: the model's own
        if name == "model":  # not set yet (copy, pickle): no endless recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if texts != self._texts:
            self._texts, self._scores = texts, self.model.predict_proba(texts)
        return self._scores


def fused_with(model, other_dir: Path, dataset: PreparedDataset, *, weight: float = 1.0,
               method: str = "rrf"):
    """The fusion of `model` (weight 1) with the model folder `other_dir` (weight `weight`),
    its threshold tuned on the dataset's val split (clem_icd.fusion.fit_threshold)."""
    from clem_icd.fusion import FusedModel, fit_threshold

    fused = FusedModel([model, load_model(other_dir)], [1.0, weight], method=method)
    fit_threshold(fused, dataset)
    return fused


def evaluate(model_dir: Path, data_dir: Path, split: str, out_dir: Path, *, baseline: str = "auto",
             baseline_options: dict | None = None, fuse_with: Path | None = None, fuse_weight: float = 1.0,
             fuse_method: str = "rrf", unseen_codes: bool = False, console: Console | None = None) -> dict:
    """Evaluate a model folder (and the baseline) on `split`; returns {column name: metrics}.
    `baseline`: "auto" (the TF-IDF baseline fitted on the dataset with `baseline_options`,
    default hyperparameters when None, cached in `out_dir/baseline_tfidf`), "none", or the
    folder of a trained baseline. `fuse_with`: a model folder to fuse with the model (weight
    `fuse_weight` against the model's 1, `fuse_method` rrf or mean) as a "fused" column, its
    threshold tuned on val. `unseen_codes`: the model with its description matcher, ranking
    codes without a training example too (clem-icd match)."""
    dataset = PreparedDataset.load(data_dir)
    if dataset.split(split).is_empty():
        raise ClemError(f"{data_dir}: no documents in split '{split}'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(model_dir, unseen_codes=unseen_codes)
    fused = None
    if fuse_with is not None:
        # Tuned first, so that the model's scores on `split` (its own column, next) are the last
        # it computed when the fused column asks for them again.
        model = LastScores(model)
        fused = fused_with(model, fuse_with, dataset, weight=fuse_weight, method=fuse_method)
    results = evaluate_model(model, "model", dataset, split, out_dir)
    if baseline != "none":
        if baseline == "auto":
            baseline_model = fit_baseline(dataset, out_dir / "baseline_tfidf", baseline_options)
        else:
            baseline_model = load_model(baseline)
        results |= evaluate_model(baseline_model, "tfidf", dataset, split, out_dir)
    if fused is not None:
        results |= evaluate_model(fused, "fused", dataset, split, out_dir)
    write_metrics_json_nested(results, split, out_dir / "metrics.json")
    render_metrics_table(results, console or Console())
    return results


def write_metrics_json_nested(results: dict, split: str, path: Path) -> None:
    """All columns in one file; undefined values (NaN) become null, as JSON has no NaN."""
    from clem_icd.atomic import write_json_atomic

    write_json_atomic({"split": split, "results": {name: {k: json_value(v) for k, v in metrics.items()}
                                                   for name, metrics in results.items()}}, path)
