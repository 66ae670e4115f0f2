"""Descriptions and validity of codes.

ICD-10-CM comes from the `simple-icd-10-cm` package (the current CMS release). MIMIC-IV uses
codes that were retired since (e.g. T81.4XXA), so a `d_icd_diagnoses` table in MIMIC-IV layout
(icd_code, icd_version, long_title) is the fallback. ICD-10-PCS and ICD-9 have no package of that
kind; their descriptions come from `d_icd_procedures` / `d_icd_diagnoses` tables.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import polars as pl

from clem_icd.codes.systems import CodeSystem, normalize_code, system_for
from clem_icd.errors import ClemError


def _icd10cm():
    # Imported on first use: the package parses the whole tabular list (~2 s) at import.
    import simple_icd_10_cm

    return simple_icd_10_cm


@lru_cache(maxsize=None)
def is_known_icd10cm(code: str) -> bool:
    return _icd10cm().is_valid_item(code)


def _read_mimic_dictionary(path: Path, is_diagnosis: bool) -> dict[tuple[CodeSystem, str], str]:
    try:
        table = pl.read_csv(path, schema_overrides={"icd_code": pl.String, "long_title": pl.String})
    except Exception as exc:  # polars raises several types; this file holds no PHI
        raise ClemError(f"{path}: cannot read code dictionary ({exc.__class__.__name__})") from None
    missing = {"icd_code", "icd_version", "long_title"} - set(table.columns)
    if missing:
        raise ClemError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    out: dict[tuple[CodeSystem, str], str] = {}
    for raw, version, title in table.select("icd_code", "icd_version", "long_title").iter_rows():
        if raw is None or version not in (9, 10):
            continue
        system = system_for(int(version), is_diagnosis)
        try:
            out[(system, normalize_code(raw, system))] = title or ""
        except ValueError:
            continue  # a dictionary row we cannot use is not a data error
    return out


@dataclass
class CodeDictionary:
    """Looks up descriptions and checks codes against the known code lists."""

    tables: dict[tuple[CodeSystem, str], str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    _prefixes: dict[str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_files(
        cls, d_icd_diagnoses: Path | None = None, d_icd_procedures: Path | None = None
    ) -> "CodeDictionary":
        dictionary = cls()
        for path, is_diagnosis in ((d_icd_diagnoses, True), (d_icd_procedures, False)):
            if path is None:
                continue
            path = Path(path)
            if not path.is_file():
                raise ClemError(f"{path}: code dictionary not found")
            dictionary.tables.update(_read_mimic_dictionary(path, is_diagnosis))
            dictionary._prefixes = None
            dictionary.sources.append(str(path))
        return dictionary

    @classmethod
    def from_mimic_hosp(cls, hosp_dir: Path) -> "CodeDictionary":
        """Use the d_icd_* tables next to MIMIC-IV hosp tables when they are there."""
        found = {}
        for name in ("d_icd_diagnoses", "d_icd_procedures"):
            candidates = [hosp_dir / f"{name}.csv.gz", hosp_dir / f"{name}.csv"]
            found[name] = next((c for c in candidates if c.is_file()), None)
        return cls.from_files(found["d_icd_diagnoses"], found["d_icd_procedures"])

    def describe(self, code: str, system: CodeSystem) -> str | None:
        if system is CodeSystem.ICD10CM and is_known_icd10cm(code):
            return _icd10cm().get_description(code)
        if system is CodeSystem.ICD10PCS and len(code) < 7:
            return self._pcs_prefixes().get(code) or None
        return self.tables.get((system, code))

    def is_known(self, code: str, system: CodeSystem) -> bool:
        """Known to the CMS release or to a loaded table. PCS prefixes count when a table has
        a full code that starts with them."""
        if system is CodeSystem.ICD10CM and is_known_icd10cm(code):
            return True
        if (system, code) in self.tables:
            return True
        if system is CodeSystem.ICD10PCS and len(code) < 7:
            return code in self._pcs_prefixes()
        return False

    def _pcs_prefixes(self) -> dict[str, str]:
        """PCS prefix (3-6 characters, as CodiEsp uses) → the words that the titles of all full
        codes under it start with, e.g. 'Plain Radiography of Chest' or 'Introduction of'.
        PCS titles are not built per character, so this is a readable hint, not a definition."""
        if self._prefixes is None:
            common: dict[str, list[str]] = {}
            for (system, code), title in self.tables.items():
                if system is not CodeSystem.ICD10PCS:
                    continue
                words = title.split()
                for n in range(3, 7):
                    known = common.get(code[:n])
                    if known is None:
                        common[code[:n]] = words
                    else:
                        k = 0
                        while k < min(len(known), len(words)) and known[k] == words[k]:
                            k += 1
                        common[code[:n]] = known[:k]
            self._prefixes = {p: " ".join(w).rstrip(" ,;:") for p, w in common.items()}
        return self._prefixes

    def can_check(self, system: CodeSystem) -> bool:
        """Whether there is a code list for `system` to check codes against."""
        return system is CodeSystem.ICD10CM or any(s is system for s, _ in self.tables)


@dataclass
class CodeReport:
    """Codes that no code list knows, with how often each occurs. They are kept in the data
    (a retired or local code is still a label) and reported in the manifest and on the console."""

    unknown: Counter = field(default_factory=Counter)
    unchecked_systems: set[str] = field(default_factory=set)

    def check(self, dictionary: CodeDictionary, occurrences: Counter) -> None:
        """`occurrences` maps (system, code) to the number of documents that have it."""
        for (system, code), count in occurrences.items():
            if not dictionary.can_check(system):
                self.unchecked_systems.add(system.value)
            elif not dictionary.is_known(code, system):
                self.unknown[(system, code)] += count

    def as_manifest(self) -> dict:
        return {
            "unknown_codes": len(self.unknown),
            "unknown_code_occurrences": sum(self.unknown.values()),
            "unknown": [
                {"code": code, "system": system.value, "documents": n}
                for (system, code), n in sorted(self.unknown.items(), key=lambda kv: (-kv[1], kv[0][1]))
            ],
            "unchecked_systems": sorted(self.unchecked_systems),
        }

    def summary(self) -> str | None:
        if not self.unknown:
            return None
        top = ", ".join(f"{code} ({n})" for (_, code), n in self.unknown.most_common(5))
        return (
            f"{len(self.unknown)} code(s) unknown to the code lists, kept as labels "
            f"({sum(self.unknown.values())} occurrences; most frequent: {top}); "
            "see manifest.json"
        )
