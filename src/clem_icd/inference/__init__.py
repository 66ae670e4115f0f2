"""Coding notes with a trained coder: inputs, tokens with offsets, attributions, evidence spans,
output formats. (Loading any model folder: clem_icd.loading.)"""

from clem_icd.inference.predictor import NotePredictor, PredictOptions

__all__ = ["NotePredictor", "PredictOptions"]
