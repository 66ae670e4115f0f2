"""Code systems: canonical spelling, structure, descriptions, the unknown-code report."""

from __future__ import annotations

import ast
import csv
import gzip
import re
from collections import Counter
from pathlib import Path

import pytest

from clem_icd.codes import (
    CodeDictionary,
    CodeReport,
    CodeSystem,
    guess_icd10_system,
    normalize_code,
)
from clem_icd.codes.icd10pcs import package_titles, shared_title

CODES_DIR = Path(__file__).resolve().parents[1] / "src" / "clem_icd" / "codes"


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
    # Without the table it is not known; its nearest current ancestor T81.4 describes it.
    assert not CodeDictionary().is_known("T81.4XXA", CodeSystem.ICD10CM)
    assert CodeDictionary().describe("T81.4XXA", CodeSystem.ICD10CM) == "Infection following a procedure"
    assert dictionary.describe("02HV33Z", CodeSystem.ICD10PCS)
    assert dictionary.is_known("BW03", CodeSystem.ICD10PCS)  # a prefix of real codes
    assert not dictionary.is_known("ZZZZ", CodeSystem.ICD10PCS)
    assert dictionary.describe("413.9", CodeSystem.ICD9CM)


def test_code_report_counts_unknown():
    report = CodeReport()
    report.check(CodeDictionary(), Counter({
        (CodeSystem.ICD10CM, "I10"): 3, (CodeSystem.ICD10CM, "Z99.999"): 2,
        (CodeSystem.ICD10PCS, "02HV33Z"): 1, (CodeSystem.ICD10PCS, "02HV3ZZ"): 4,
        (CodeSystem.ICD9CM, "413.9"): 1}))
    manifest = report.as_manifest()
    assert manifest["unknown_codes"] == 2 and manifest["unknown_code_occurrences"] == 6
    assert manifest["unknown"] == [{"code": "02HV3ZZ", "system": "icd10pcs", "documents": 4},
                                   {"code": "Z99.999", "system": "icd10cm", "documents": 2}]
    assert manifest["unchecked_systems"] == ["icd9cm"]  # PCS is checked by the package's table
    assert "Z99.999 (2)" in report.summary()
    without_packages = CodeReport()
    without_packages.check(CodeDictionary(packages=False), Counter({(CodeSystem.ICD10PCS, "02HV33Z"): 1}))
    assert without_packages.as_manifest()["unchecked_systems"] == ["icd10pcs"]


def test_pcs_prefix_descriptions(mimic_iv_demo):
    """CodiEsp uses 4-character PCS prefixes: described by the words all their codes share."""
    dictionary = CodeDictionary.from_mimic_hosp(mimic_iv_demo / "hosp")
    titles = [t for (s, c), t in dictionary.tables.items() if s is CodeSystem.ICD10PCS and c.startswith("0DT6")]
    assert len(titles) > 1
    described = dictionary.describe("0DT6", CodeSystem.ICD10PCS)
    assert described == "Resection of Stomach"
    assert all(t.startswith(described) for t in titles)
    assert dictionary.describe("ZZZZ", CodeSystem.ICD10PCS) is None


# ---------------------------------------------------------------- descriptions out of the box


def demo_pcs_titles(mimic_iv_demo: Path) -> dict[str, str]:
    """Full ICD-10-PCS code → long title of the MIMIC-IV demo table, read without the module."""
    with gzip.open(mimic_iv_demo / "hosp" / "d_icd_procedures.csv.gz", "rt", encoding="utf-8") as handle:
        return {row["icd_code"]: row["long_title"] for row in csv.DictReader(handle) if row["icd_version"] == "10"}


def is_subsequence(words: list[str], title: str) -> bool:
    tokens = iter(re.findall(r"[^\s,;:]+|[,;:]", title))
    return all(any(word == token for token in tokens) for word in words)


def test_package_has_all_of_icd10pcs():
    titles = package_titles()
    assert len(titles) > 78_000
    assert {code[0] for code in titles} == set("0123456789BCDFGHX")  # all 17 sections
    assert all(len(code) == 7 and title for code, title in titles.items())
    dictionary = CodeDictionary()
    assert dictionary.describe("BW03ZZZ", CodeSystem.ICD10PCS) == "Plain Radiography of Chest"
    assert dictionary.is_known("02HV33Z", CodeSystem.ICD10PCS)


@pytest.mark.shared_data
def test_package_pcs_titles_agree_with_mimic_iv_demo(mimic_iv_demo):
    """The CMS table of the package (FY2026) and the MIMIC-IV demo table (CMS releases up to
    2022, retired codes kept) give the same title to nearly every code both have."""
    demo, package = demo_pcs_titles(mimic_iv_demo), package_titles()
    shared = sorted(set(demo) & set(package))
    assert len(shared) > 75_000
    agreement = sum(demo[c] == package[c] for c in shared) / len(shared)
    assert agreement > 0.998, agreement  # 99.92%: the rest are CMS title revisions
    assert all(demo[c] == package[c] for c in shared[::500])  # a spread-out sample, exactly


@pytest.mark.parametrize("prefix,expected", [
    ("0DT6", "Resection of Stomach"),
    ("0VB0", "Excision of Prostate"),
    ("BW03", "Plain Radiography of Chest"),
    ("BW25", "Computerized Tomography (CT Scan) of Chest, Abdomen and Pelvis"),  # a comma inside
    ("0BH1", "Insertion of ... into Trachea"),  # the device differs in the middle
    ("0T9B", "Drainage of Bladder"),
    ("5A1D", "Performance of Urinary Filtration"),
    ("0D1B", "Bypass Ileum"),  # no dangling "to"
])
def test_pcs_prefix_descriptions_out_of_the_box(prefix, expected):
    dictionary = CodeDictionary()
    assert dictionary.describe_with_rule(prefix, CodeSystem.ICD10PCS) == (expected, "icd10pcs_prefix")
    assert dictionary.is_known(prefix, CodeSystem.ICD10PCS)
    assert dictionary.describe("ZZZZ", CodeSystem.ICD10PCS) is None


@pytest.mark.shared_data
def test_pcs_prefix_description_is_what_its_codes_share(mimic_iv_demo, codiesp_dir):
    """For every PCS prefix of CodiEsp, the words of its description occur, in order, in the
    title of every full code under it, checked against the demo table's titles (computed
    independently of the package), and the description is not empty."""
    demo = demo_pcs_titles(mimic_iv_demo)
    package = package_titles()
    prefixes = set()
    for split in ("train", "dev"):
        for line in (codiesp_dir / split / f"{split}P.tsv").read_text("utf-8").splitlines():
            code = line.split("\t")[1].strip().upper()
            if len(code) < 7:
                prefixes.add(code)
    assert len(prefixes) > 400
    under: dict[str, list[str]] = {prefix: [] for prefix in prefixes}
    for code, title in demo.items():
        for n in range(3, 7):
            if code[:n] in under and code in package:
                under[code[:n]].append(title)
    dictionary = CodeDictionary()
    for prefix in sorted(prefixes):
        described = dictionary.describe(prefix, CodeSystem.ICD10PCS)
        assert described, prefix
        words = [w for w in re.findall(r"[^\s,;:]+|[,;:]", described) if w != "..."]
        current = under[prefix]
        assert current, prefix
        assert all(is_subsequence(words, title) for title in current), prefix
    # The same rule on the demo table alone gives the same phrase where it has the same codes.
    from_table = CodeDictionary.from_mimic_hosp(mimic_iv_demo / "hosp")
    from_table.packages = False
    assert from_table.describe("0VB0", CodeSystem.ICD10PCS) == "Excision of Prostate"


def test_shared_title():
    assert shared_title(["Excision of Liver, Open Approach", "Excision of Liver, Percutaneous Approach"]) \
        == "Excision of Liver"
    assert shared_title(["Insertion of Airway into Trachea, Open Approach",
                         "Insertion of Monitoring Device into Trachea, Open Approach"]) \
        == "Insertion of ... into Trachea, Open Approach"
    assert shared_title(["Fluoroscopy of Kidneys, Ureters and Bladder"]) == "Fluoroscopy of Kidneys, Ureters and Bladder"
    assert shared_title(["Alpha", "Beta"]) == ""
    assert shared_title([]) == ""


@pytest.mark.parametrize("code,parent", [
    ("S02.0XX", "S02.0"),   # CodiEsp writes 7-character codes without their 7th character
    ("W19.XXX", "W19"),
    ("T81.4XX", "T81.4"),
    ("S19.9X", "S19.9"),
    ("T81.4XXA", "T81.4"),  # retired from the current list
])
def test_truncated_cm_code_gets_its_parents_description(code, parent):
    import simple_icd_10_cm as cm

    dictionary = CodeDictionary()
    assert not cm.is_valid_item(code) and cm.is_valid_item(parent)
    assert dictionary.describe_with_rule(code, CodeSystem.ICD10CM) == (cm.get_description(parent), "icd10cm_parent")
    assert not dictionary.is_known(code, CodeSystem.ICD10CM)  # described, still reported as unknown
    assert dictionary.describe("S02.0XX", CodeSystem.ICD10CM) == "Fracture of vault of skull"
    assert dictionary.describe("U00.0XX", CodeSystem.ICD10CM) is None  # no such category


def test_retired_pcs_code_gets_its_body_part_prefix():
    dictionary = CodeDictionary()
    assert not dictionary.is_known("5A1D60Z", CodeSystem.ICD10PCS)
    assert dictionary.describe_with_rule("5A1D60Z", CodeSystem.ICD10PCS) == \
        ("Performance of Urinary Filtration", "icd10pcs_parent")


def _imported_modules(path: Path) -> set[str]:
    """Every module that `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_codes_modules_import_one_way():
    """icd10cm <- systems <- dictionary: the tabular-list lookup has one home below both."""
    systems = _imported_modules(CODES_DIR / "systems.py")
    assert not any(name.startswith("clem_icd.codes.dictionary") for name in systems), systems
    assert "clem_icd.codes.icd10cm" in systems
    for leaf in ("icd10cm.py", "icd10pcs.py"):
        assert not any(name.startswith("clem_icd") for name in _imported_modules(CODES_DIR / leaf)), leaf


def test_missing_pcs_package_is_a_clear_error(monkeypatch):
    from clem_icd.codes import icd10pcs
    from clem_icd.errors import ClemError

    monkeypatch.setattr(icd10pcs, "PACKAGE", "no_such_package_for_pcs")
    icd10pcs.package_titles.cache_clear()
    try:
        with pytest.raises(ClemError, match="ICD-10-PCS table"):
            CodeDictionary().describe("BW03ZZZ", CodeSystem.ICD10PCS)
    finally:
        icd10pcs.package_titles.cache_clear()
