"""The CLEM-ICD model: encoder + label-wise attention head."""

from clem_icd.model.coder import ICDCoder
from clem_icd.model.config import ICDCoderConfig

__all__ = ["ICDCoder", "ICDCoderConfig"]
