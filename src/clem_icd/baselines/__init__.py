"""Classical baselines to compare the neural coder against."""

from clem_icd.baselines.tfidf import TfidfCoder

__all__ = ["TfidfCoder"]
