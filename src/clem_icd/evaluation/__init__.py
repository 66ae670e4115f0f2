"""Evaluation: the metrics protocol of Edin et al. (2023) and the files and tables reporting it."""

from clem_icd.evaluation.metrics import (
    METRIC_KEYS,
    THRESHOLD_GRID,
    compute_metrics,
    per_code_table,
    tune_threshold,
)

__all__ = ["METRIC_KEYS", "THRESHOLD_GRID", "compute_metrics", "per_code_table", "tune_threshold"]
