"""Code systems: canonical spelling, structure, descriptions, the unknown-code report."""

from __future__ import annotations

from collections import Counter

import pytest

from clem_icd.codes import (
    CodeDictionary,
    CodeReport,
    CodeSystem,
    guess_icd10_system,
    normalize_code,
)


@pytest.mark.parametrize("raw,system,expected", [
    ("I10", "icd10cm", "I10"),            # 3 characters: no dot
    ("i10", "icd10cm", "I10"),
    ("E785", "icd10cm", "E78.5"),
    ("e78.5", "icd10cm", "E78.5"),
    ("T814XXA", "icd10cm", "T81.4XXA"),
    (" z20.818 ", "icd10cm", "Z20.818"),
    ("02hv33z", "icd10pcs", "02HV33Z"),
    ("bn20", "icd10pcs", "BN20"),          # CodiEsp 4-character prefix
    ("4139", "icd9cm", "413.9"),
    ("V707", "icd9cm", "V70.7"),
    ("E8782", "icd9cm", "E878.2"),          # E codes: dot after the 4th character
    ("E878", "icd9cm", "E878"),
    ("486", "icd9cm", "486"),
    ("3961", "icd9pcs", "39.61"),
    ("966", "icd9pcs", "96.6"),
])
def test_normalize(raw, system, expected):
    assert normalize_code(raw, system) == expected


@pytest.mark.parametrize("raw,system", [
    ("", "icd10cm"), ("I1#0", "icd10cm"), ("10I", "icd10cm"), ("I10.12345", "icd10cm"),
    ("02HV33ZZ", "icd10pcs"), ("02IV33Z", "icd10pcs"),  # PCS has no letter I
    ("41", "icd9cm"), ("X123", "icd9cm"), ("3", "icd9pcs"),
])
def test_normalize_rejects(raw, system):
    with pytest.raises(ValueError):
        normalize_code(raw, system)


def test_guess_icd10_system():
    assert guess_icd10_system("I10") is CodeSystem.ICD10CM
    assert guess_icd10_system("E78.5") is CodeSystem.ICD10CM
    assert guess_icd10_system("02HV33Z") is CodeSystem.ICD10PCS
    assert guess_icd10_system("BW03ZZZ") is CodeSystem.ICD10PCS
    assert guess_icd10_system("E785") is CodeSystem.ICD10CM
    with pytest.raises(ValueError):
        guess_icd10_system("??")


def test_descriptions_and_retired_codes(mimic_iv_demo):
    hosp = mimic_iv_demo / "hosp"
    dictionary = CodeDictionary.from_mimic_hosp(hosp)
    assert dictionary.describe("I10", CodeSystem.ICD10CM) == "Essential (primary) hypertension"
    # T81.4XXA was retired from ICD-10-CM; the MIMIC-IV dictionary still describes it.
    assert dictionary.describe("T81.4XXA", CodeSystem.ICD10CM)
    assert dictionary.is_known("T81.4XXA", CodeSystem.ICD10CM)
    assert CodeDictionary().describe("T81.4XXA", CodeSystem.ICD10CM) is None
    assert dictionary.describe("02HV33Z", CodeSystem.ICD10PCS)
    assert dictionary.is_known("BW03", CodeSystem.ICD10PCS)  # a prefix of real codes
    assert not dictionary.is_known("ZZZZ", CodeSystem.ICD10PCS)
    assert dictionary.describe("413.9", CodeSystem.ICD9CM)


def test_code_report_counts_unknown():
    report = CodeReport()
    report.check(CodeDictionary(), Counter({
        (CodeSystem.ICD10CM, "I10"): 3, (CodeSystem.ICD10CM, "Z99.999"): 2,
        (CodeSystem.ICD10PCS, "02HV33Z"): 1}))
    manifest = report.as_manifest()
    assert manifest["unknown_codes"] == 1 and manifest["unknown_code_occurrences"] == 2
    assert manifest["unknown"] == [{"code": "Z99.999", "system": "icd10cm", "documents": 2}]
    assert manifest["unchecked_systems"] == ["icd10pcs"]  # no PCS table loaded
    assert "Z99.999 (2)" in report.summary()


def test_pcs_prefix_descriptions(mimic_iv_demo):
    """CodiEsp uses 4-character PCS prefixes: described by the words all their codes share."""
    dictionary = CodeDictionary.from_mimic_hosp(mimic_iv_demo / "hosp")
    titles = [t for (s, c), t in dictionary.tables.items() if s is CodeSystem.ICD10PCS and c.startswith("0DT6")]
    assert len(titles) > 1
    described = dictionary.describe("0DT6", CodeSystem.ICD10PCS)
    assert described == "Resection of Stomach"
    assert all(t.startswith(described) for t in titles)
    assert dictionary.describe("ZZZZ", CodeSystem.ICD10PCS) is None
