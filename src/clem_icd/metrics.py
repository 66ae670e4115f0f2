"""`clem_icd.metrics`: the evaluation protocol of Edin et al. (2023), under its short name.

    from clem_icd.metrics import compute_metrics, tune_threshold
"""

from clem_icd.evaluation.metrics import METRIC_KEYS, compute_metrics, per_code_table, tune_threshold

__all__ = ["METRIC_KEYS", "compute_metrics", "per_code_table", "tune_threshold"]
