"""ICD code systems: normalisation, validation and descriptions."""

from clem_icd.codes.dictionary import CodeDictionary, CodeReport
from clem_icd.codes.icd10cm import is_known_icd10cm
from clem_icd.codes.rich import description_texts, rich_description
from clem_icd.codes.systems import CodeSystem, guess_icd10_system, normalize_code, system_for

__all__ = [
    "CodeDictionary",
    "CodeReport",
    "CodeSystem",
    "description_texts",
    "guess_icd10_system",
    "is_known_icd10cm",
    "normalize_code",
    "rich_description",
    "system_for",
]
