"""Running trained models: loading any model folder, scoring notes."""

from clem_icd.inference.loader import load_model

__all__ = ["load_model"]
