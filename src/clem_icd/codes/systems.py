"""ICD code systems: canonical spelling and structural checks.

Canonical forms follow the MIMIC benchmarks (Mullenbach et al. 2018, Edin et al. 2023):
- ICD-10-CM: upper case, a dot after the 3rd character when the code is longer than 3.
- ICD-10-PCS: upper case, no dot (full codes have 7 characters; CodiEsp also uses 4-character
  prefixes, which are accepted as partial codes).
- ICD-9-CM diagnoses: a dot after the 3rd character (after the 4th for E codes) when longer.
- ICD-9-CM procedures: a dot after the 2nd character when longer than 2.
"""

from __future__ import annotations

import re
from enum import StrEnum

from clem_icd.codes.icd10cm import is_known_icd10cm


class CodeSystem(StrEnum):
    ICD10CM = "icd10cm"
    ICD10PCS = "icd10pcs"
    ICD9CM = "icd9cm"  # ICD-9-CM volumes 1-2: diagnoses
    ICD9PCS = "icd9pcs"  # ICD-9-CM volume 3: procedures

    @property
    def is_diagnosis(self) -> bool:
        return self in (CodeSystem.ICD10CM, CodeSystem.ICD9CM)

    @property
    def version(self) -> int:
        return 10 if self in (CodeSystem.ICD10CM, CodeSystem.ICD10PCS) else 9


def system_for(version: int, is_diagnosis: bool) -> CodeSystem:
    """The code system of a MIMIC `icd_version` column value and table kind."""
    if version == 10:
        return CodeSystem.ICD10CM if is_diagnosis else CodeSystem.ICD10PCS
    if version == 9:
        return CodeSystem.ICD9CM if is_diagnosis else CodeSystem.ICD9PCS
    raise ValueError(f"ICD version must be 9 or 10, got {version}")


# Structure of canonical codes. PCS excludes the letters I and O by definition.
_PATTERNS = {
    CodeSystem.ICD10CM: re.compile(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?"),
    CodeSystem.ICD10PCS: re.compile(r"[0-9A-HJ-NP-Z]{3,7}"),
    CodeSystem.ICD9CM: re.compile(r"(\d{3}|V\d{2})(\.\d{1,2})?|E\d{3}(\.\d)?"),
    CodeSystem.ICD9PCS: re.compile(r"\d{2}(\.\d{1,2})?"),
}
_ALLOWED = re.compile(r"[0-9A-Z]+")


def _insert_dot(code: str, position: int) -> str:
    return code[:position] + "." + code[position:] if len(code) > position else code


def normalize_code(code: str, system: CodeSystem | str) -> str:
    """Canonical spelling of `code` in `system`; raises ValueError when it cannot be a code."""
    system = CodeSystem(system)
    bare = "".join(str(code).split()).replace(".", "").upper()
    if not bare or not _ALLOWED.fullmatch(bare):
        raise ValueError(f"'{code}' is not an ICD code (only letters, digits and one dot)")
    if system is CodeSystem.ICD10CM:
        canonical = _insert_dot(bare, 3)
    elif system is CodeSystem.ICD10PCS:
        canonical = bare
    elif system is CodeSystem.ICD9CM:
        canonical = _insert_dot(bare, 4 if bare.startswith("E") else 3)
    else:
        canonical = _insert_dot(bare, 2)
    if not _PATTERNS[system].fullmatch(canonical):
        raise ValueError(f"'{code}' is not a well-formed {system.value} code")
    return canonical


def guess_icd10_system(code: str) -> CodeSystem:
    """ICD-10-CM or ICD-10-PCS from the shape of a code, for data that does not say.

    A dotted code, or one starting with a letter followed by a digit and at most 7 characters
    that is not a valid PCS string, is CM; a 7-character string (or a shorter PCS prefix)
    that is a valid PCS string is PCS. CM codes written without dots that are also valid
    PCS strings (rare: 7 characters, first letter B, C, D, F, G, H or X, no I/O) are resolved by
    the CM tabular list.
    """
    text = "".join(str(code).split()).upper()
    if "." in text:
        return CodeSystem.ICD10CM
    cm_ok = _PATTERNS[CodeSystem.ICD10CM].fullmatch(_insert_dot(text, 3)) is not None
    pcs_ok = _PATTERNS[CodeSystem.ICD10PCS].fullmatch(text) is not None
    if cm_ok and pcs_ok:
        if len(text) == 3 or is_known_icd10cm(_insert_dot(text, 3)):
            return CodeSystem.ICD10CM
        return CodeSystem.ICD10PCS
    if cm_ok:
        return CodeSystem.ICD10CM
    if pcs_ok:
        return CodeSystem.ICD10PCS
    raise ValueError(f"'{code}' is neither an ICD-10-CM nor an ICD-10-PCS code")
