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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console

from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.labels import targets_matrix
from clem_icd.errors import ClemError
from clem_icd.evaluation.metrics import compute_metrics, per_code_table
from clem_icd.evaluation.report import (
    json_tree,
    render_metrics_table,
    write_codiesp_ranking,
    write_metrics_json,
    write_per_code_csv,
)
from clem_icd.evaluation.scoring import Scorer, ScoringOptions
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


@dataclass
class SplitScores:
    """A model's scores of a split: `scores` (notes, len(codes)) in the columns `codes`, a
    sub-sequence of the label space (label_space order) that holds every code of the split. For
    an open-set coder over a whole code system, `codes` is the model's own codes and the split's,
    and each note's best `beyond` other codes of the label space come as (`beyond_codes`
    indices into `space`, `beyond_scores`), enough for its ranking file; else `codes` is the
    whole label space and `beyond_*` are None."""

    space: list[str]
    codes: list[str]
    scores: np.ndarray
    beyond_codes: np.ndarray | None = None
    beyond_scores: np.ndarray | None = None


def score_split(model, texts: list[str], n_codes: int, scorer: Scorer | None = None) -> np.ndarray:
    """(notes, n_codes): the model's scores in its first columns, 0 in the label space's others."""
    scores = np.zeros((len(texts), n_codes), dtype=np.float32)
    scores[:, : len(model.codes)] = (scorer or Scorer())(model, texts)
    return scores


def split_scores(model, texts: list[str], dataset_codes: list[str], split_codes: set[str],
                 scorer: Scorer) -> SplitScores:
    """The model's scores of a split's notes (see SplitScores). The metrics score only the codes
    of the split (clem_icd.evaluation.metrics), so an open-set coder's matrix is cut to the
    model's own codes and the split's: the same metrics as the whole matrix (19,802 x 140,694 on
    MIMIC-IV test, 11 GB), which is never made, and each note's best RANKING_DEPTH other codes
    make its ranking file the same as the whole matrix's first RANKING_DEPTH."""
    from clem_icd.matching.open_set import OpenSetCoder

    space = label_space(model.codes, dataset_codes)
    if not isinstance(model, OpenSetCoder) or len(space) <= FULL_RANKING_CODES:
        return SplitScores(space, space, score_split(model, texts, len(space), scorer))
    own = len(model.model.codes)
    keep = np.array([j for j, code in enumerate(space) if j < own or code in split_codes], dtype=np.int64)
    in_model = keep[keep < len(model.codes)]
    dense, beyond, beyond_scores = scorer.open_set_scores(model, texts, in_model, RANKING_DEPTH)
    scores = dense
    if len(in_model) < len(keep):  # the split's codes the open-set coder does not know: 0
        scores = np.zeros((len(texts), len(keep)), dtype=np.float32)
        scores[:, :len(in_model)] = dense
    return SplitScores(space, [space[j] for j in keep], scores, beyond, beyond_scores)


def write_ranking(ids: list[str], scored: SplitScores, path: Path) -> None:
    """The CodiEsp ranking file of `scored`: each note's codes best first (ties by label-space
    column), all of them up to FULL_RANKING_CODES codes, else the best RANKING_DEPTH."""
    depth = None if len(scored.space) <= FULL_RANKING_CODES else RANKING_DEPTH
    if scored.beyond_codes is None:
        write_codiesp_ranking(ids, scored.scores, scored.codes, path, top_k=depth)
        return
    from clem_icd.atomic import write_text_atomic

    column = {code: j for j, code in enumerate(scored.space)}
    columns = np.array([column[c] for c in scored.codes], dtype=np.int64)
    lower = [str(code).lower() for code in scored.space]

    def pieces():
        for start in range(0, len(ids), 256):  # 256 notes at a time: the candidates are notes x ~9,000
            part = slice(start, start + 256)
            candidates = np.concatenate([np.broadcast_to(columns, (len(scored.scores[part]), len(columns))),
                                         scored.beyond_codes[part]], axis=1)
            values = np.concatenate([scored.scores[part], scored.beyond_scores[part]], axis=1).astype(np.float64)
            order = np.lexsort((candidates, -values), axis=1)[:, :depth]
            best = np.take_along_axis(candidates, order, axis=1)
            yield "".join(f"{doc}\t{lower[j]}\n" for doc, row in zip(ids[part], best) for j in row)

    write_text_atomic(pieces(), path)


def evaluate_model(model, name: str, dataset: PreparedDataset, split: str, out_dir: Path,
                   scorer: Scorer | None = None, bootstrap: int = 0, bootstrap_seed: int = 0) -> dict:
    """Metrics of one model at its tuned threshold and at 0.5; writes its per-code CSV and the
    CodiEsp ranking file. Returns {"<name> @ <threshold>": metrics, "<name> @ 0.5": metrics};
    on a process other than the main one of `accelerate launch` it scores its share only and
    returns {} (the main process computes and writes). `bootstrap`: that many resamples of the
    split's notes (seed `bootstrap_seed`) give each metric a 95% interval, as metrics["ci95"]
    (clem_icd.evaluation.bootstrap; the same seed draws the same notes for every model)."""
    scorer = scorer or Scorer()
    documents = dataset.split(split)
    code_lists = documents["codes"].to_list()
    started = time.perf_counter()
    scored = split_scores(model, documents["text"].to_list(), dataset.code_list,
                          {c for codes in code_lists for c in codes}, scorer)
    seconds = time.perf_counter() - started
    if not scorer.processes.is_main:
        return {}
    scores, codes = scored.scores, scored.codes
    targets = targets_matrix(code_lists, codes)
    threshold = float(model.threshold)
    tuned = compute_metrics(scores, targets, threshold)
    at_half = compute_metrics(scores, targets, 0.5)
    if bootstrap:
        from clem_icd.evaluation.bootstrap import bootstrap_intervals

        # Both thresholds in one pass: the ranking and AUC metrics are computed once.
        tuned["ci95"], at_half["ci95"] = bootstrap_intervals(scores, targets, [threshold, 0.5],
                                                             resamples=bootstrap, seed=bootstrap_seed)
    descriptions = dict(zip(dataset.code_list, dataset.codes["description"].to_list()))
    table = per_code_table(scores, targets, threshold, codes, [descriptions.get(c, "") for c in codes])
    write_per_code_csv(table, out_dir / f"{name}_per_code.csv")
    write_ranking(documents["id"].to_list(), scored, out_dir / f"{name}_ranking.tsv")
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


def fused_with(model, other_dir: Path, dataset: PreparedDataset, *, weight: float = 1.0,
               method: str = "rrf", scorer: Scorer | None = None):
    """The fusion of `model` (weight 1) with the model folder `other_dir` (weight `weight`),
    its threshold tuned on the dataset's val split (clem_icd.fusion.fit_threshold), the members
    scored by `scorer`."""
    from clem_icd.fusion import FusedModel, fit_threshold

    scorer = scorer or Scorer()
    fused = FusedModel([model, load_model(other_dir, device=scorer.device)], [1.0, weight], method=method)
    fit_threshold(fused, dataset, score=scorer)
    return fused


def evaluate(model_dir: Path, data_dir: Path, split: str, out_dir: Path, *, baseline: str = "auto",
             baseline_options: dict | None = None, fuse_with: Path | None = None, fuse_weight: float = 1.0,
             fuse_method: str = "rrf", unseen_codes: bool = False, scoring: ScoringOptions | None = None,
             bootstrap: int = 0, bootstrap_seed: int = 0, console: Console | None = None) -> dict:
    """Evaluate a model folder (and the baseline) on `split`; returns {column name: metrics}.
    `baseline`: "auto" (the TF-IDF baseline fitted on the dataset with `baseline_options`,
    default hyperparameters when None, cached in `out_dir/baseline_tfidf`), "none", or the
    folder of a trained baseline. `fuse_with`: a model folder to fuse with the model (weight
    `fuse_weight` against the model's 1, `fuse_method` rrf or mean) as a "fused" column, its
    threshold tuned on val. `unseen_codes`: the model with its description matcher, ranking
    codes without a training example too (clem-icd match). `scoring`: device, precision and
    batches of the neural models (clem_icd.evaluation.scoring; by default as training scored
    val). `bootstrap`: resamples of the notes for 95% intervals of every column's metrics ("ci95"
    in metrics.json; 0: none), drawn with `bootstrap_seed`: the same notes for every column, so
    that columns are compared on paired resamples. Under `accelerate launch` every process scores its share of the notes and the main
    process computes the metrics and writes every file (the others return {})."""
    if bootstrap < 0:
        raise ClemError(f"--bootstrap must be 0 (none) or a number of resamples, got {bootstrap}")
    resampling = {"bootstrap": bootstrap, "bootstrap_seed": bootstrap_seed}
    scorer = Scorer(scoring)
    main = scorer.processes.is_main
    dataset = PreparedDataset.load(data_dir)
    if dataset.split(split).is_empty():
        raise ClemError(f"{data_dir}: no documents in split '{split}'")
    out_dir = Path(out_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    model = load_model(model_dir, device=scorer.device, unseen_codes=unseen_codes)
    fused = None
    if fuse_with is not None:
        # The model's scores of `split` (its own column, next) are kept for the fused column.
        scorer.remember(model)
        fused = fused_with(model, fuse_with, dataset, weight=fuse_weight, method=fuse_method, scorer=scorer)
    results = evaluate_model(model, "model", dataset, split, out_dir, scorer, **resampling)
    # The fused column before the baseline: all processes score it, while the baseline is the
    # main process's alone (TF-IDF on CPU; fitting it on MIMIC-IV outlasts a collective's timeout).
    fused_results = {} if fused is None else evaluate_model(fused, "fused", dataset, split, out_dir, scorer,
                                                            **resampling)
    if baseline != "none" and main:
        if baseline == "auto":
            baseline_model = fit_baseline(dataset, out_dir / "baseline_tfidf", baseline_options)
        else:
            baseline_model = load_model(baseline)
        results |= evaluate_model(baseline_model, "tfidf", dataset, split, out_dir, scorer, **resampling)
    results |= fused_results
    if main:
        write_metrics_json_nested(results, split, out_dir / "metrics.json",
                                  {"resamples": bootstrap, "seed": bootstrap_seed} if bootstrap else None)
        render_metrics_table(results, console or Console())
    return results


def write_metrics_json_nested(results: dict, split: str, path: Path, bootstrap: dict | None = None) -> None:
    """All columns in one file; undefined values (NaN) become null, as JSON has no NaN.
    `bootstrap`: how the columns' ci95 intervals were drawn (resamples, seed)."""
    from clem_icd.atomic import write_json_atomic

    head = {"split": split} | ({"bootstrap": {**bootstrap, "confidence": 0.95, "over": "notes"}} if bootstrap else {})
    write_json_atomic({**head, "results": {name: {k: json_tree(v) for k, v in metrics.items()}
                                           for name, metrics in results.items()}}, path)
