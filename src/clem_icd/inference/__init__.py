"""Running trained models: loading any model folder, coding notes with evidence."""

from clem_icd.inference.loader import load_model
from clem_icd.inference.predictor import NotePredictor, PredictOptions

__all__ = ["NotePredictor", "PredictOptions", "load_model"]
