"""The CLEM-ICD model: encoder + label-wise attention head."""

from clem_icd.model.coder import ICDCoder
from clem_icd.model.config import CoderSettings, ICDCoderConfig

__all__ = ["CoderSettings", "ICDCoder", "ICDCoderConfig"]
