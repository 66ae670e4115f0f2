"""Descriptions and validity of codes, out of the box for ICD-10-CM and ICD-10-PCS.

- ICD-10-CM: the `simple-icd-10-cm` package (the current CMS tabular list, `icd10cm.py`).
- ICD-10-PCS: the CMS code table that the `drg` package ships (`icd10pcs.py`).
- Tables in MIMIC-IV layout (`d_icd_diagnoses` / `d_icd_procedures`: icd_code, icd_version,
  long_title) come first where given: MIMIC-IV uses codes retired since (e.g. T81.4XXA), and they
  are the only source for ICD-9.

Every description comes from one rule, counted in the manifest (`describe_with_rule`):
  icd10cm           the code is in the CM tabular list
  table             the code is in a loaded table
  icd10pcs          a full PCS code of the CMS table
  icd10pcs_prefix   a PCS prefix (3-6 characters, as CodiEsp uses): what the titles of all full
                    codes under it share (`icd10pcs.shared_title`)
  icd10cm_parent    a CM code the list does not have, e.g. written without its 7th character
                    (CodiEsp's `S02.0XX`): the description of its nearest ancestor in the list
                    (`icd10cm.nearest_icd10cm_parent`)
  icd10pcs_parent   a full PCS code no table has (retired, e.g. 5A1D60Z): what the codes under
                    its 4-character prefix (section, body system, operation, body part) share
The two parent rules describe; they do not make a code known: such codes stay in the
unknown-code report.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from clem_icd.codes import icd10pcs
from clem_icd.codes.icd10cm import icd10cm_description, is_known_icd10cm, nearest_icd10cm_parent
from clem_icd.codes.systems import CodeSystem, normalize_code, system_for
from clem_icd.errors import ClemError

RULES = ("icd10cm", "table", "icd10pcs", "icd10pcs_prefix", "icd10cm_parent", "icd10pcs_parent")


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
    """Looks up descriptions and checks codes against the known code lists.

    `CodeDictionary()` already knows ICD-10-CM and ICD-10-PCS (from the packages); tables add
    codes, and their titles come before the PCS package's (the CM tabular list comes first).
    `packages=False` (set before the first lookup) leaves only the CM list and the tables."""

    tables: dict[tuple[CodeSystem, str], str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    packages: bool = True
    _pcs: tuple[dict[str, str], list[str]] | None = field(default=None, repr=False)
    _prefixes: dict[str, str] = field(default_factory=dict, repr=False)

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
            dictionary.add_table(_read_mimic_dictionary(path, is_diagnosis), str(path))
        return dictionary

    @classmethod
    def from_mimic_hosp(cls, hosp_dir: Path) -> "CodeDictionary":
        """Use the d_icd_* tables next to MIMIC-IV hosp tables when they are there."""
        found = {}
        for name in ("d_icd_diagnoses", "d_icd_procedures"):
            candidates = [hosp_dir / f"{name}.csv.gz", hosp_dir / f"{name}.csv"]
            found[name] = next((c for c in candidates if c.is_file()), None)
        return cls.from_files(found["d_icd_diagnoses"], found["d_icd_procedures"])

    def add_table(self, entries: dict[tuple[CodeSystem, str], str], source: str) -> None:
        """Add (system, code) -> title entries; they take precedence over the packages."""
        self.tables.update(entries)
        self.sources.append(source)
        self._pcs = None
        self._prefixes = {}

    def package_versions(self) -> dict[str, str | None]:
        """The packages that the descriptions and checks come from, with their versions."""
        from importlib import metadata

        try:
            cm = metadata.version("simple-icd-10-cm")
        except metadata.PackageNotFoundError:
            cm = None
        return {"simple-icd-10-cm": cm, **({icd10pcs.PACKAGE: icd10pcs.package_version()} if self.packages else {})}

    # ------------------------------------------------------------ lookups

    def describe(self, code: str, system: CodeSystem) -> str | None:
        return self.describe_with_rule(code, system)[0]

    def describe_with_rule(self, code: str, system: CodeSystem) -> tuple[str | None, str | None]:
        """(description, rule) by the first rule that gives one (see the module docstring);
        (None, None) when none does."""
        if system is CodeSystem.ICD10CM:
            described = icd10cm_description(code)
            if described:
                return described, "icd10cm"
        if self.tables.get((system, code)):
            return self.tables[(system, code)], "table"
        if system is CodeSystem.ICD10CM:
            parent = nearest_icd10cm_parent(code)
            return (icd10cm_description(parent), "icd10cm_parent") if parent else (None, None)
        if system is CodeSystem.ICD10PCS:
            titles, _ = self._pcs_titles()
            if len(code) >= icd10pcs.FULL_LENGTH:
                if titles.get(code):
                    return titles[code], "icd10pcs"
                # A retired code: its body-part prefix. Longer prefixes (approach, device) hold
                # only the codes left after the change, whose shared words may not apply to it.
                for length in (icd10pcs.BODY_PART_PREFIX, icd10pcs.MIN_PREFIX):
                    described = self._prefix_description(code[:length])
                    if described:
                        return described, "icd10pcs_parent"
                return None, None
            described = self._prefix_description(code)
            return (described, "icd10pcs_prefix") if described else (None, None)
        return None, None

    def is_known(self, code: str, system: CodeSystem) -> bool:
        """Known to the CMS release or to a loaded table. PCS prefixes count when a full code
        starts with them."""
        if system is CodeSystem.ICD10CM and is_known_icd10cm(code):
            return True
        if (system, code) in self.tables:
            return True
        if system is CodeSystem.ICD10PCS:
            titles, _ = self._pcs_titles()
            if len(code) >= icd10pcs.FULL_LENGTH:
                return code in titles
            return bool(self._codes_under(code))
        return False

    def can_check(self, system: CodeSystem) -> bool:
        """Whether there is a code list for `system` to check codes against."""
        if system is CodeSystem.ICD10CM or (system is CodeSystem.ICD10PCS and self.packages):
            return True
        return any(s is system for s, _ in self.tables)

    # ------------------------------------------------------------ ICD-10-PCS

    def _pcs_titles(self) -> tuple[dict[str, str], list[str]]:
        """Full PCS code -> title (package, then tables over it) and the codes sorted."""
        if self._pcs is None:
            try:
                titles = dict(icd10pcs.package_titles()) if self.packages else {}
            except icd10pcs.PcsTableMissing as exc:
                raise ClemError(str(exc)) from None
            titles.update({code: title for (system, code), title in self.tables.items()
                           if system is CodeSystem.ICD10PCS and len(code) == icd10pcs.FULL_LENGTH})
            self._pcs = (titles, sorted(titles))
        return self._pcs

    def _codes_under(self, prefix: str) -> list[str]:
        _, codes = self._pcs_titles()
        start = bisect_left(codes, prefix)
        end = bisect_left(codes, prefix + "\x7f", lo=start)
        return codes[start:end]

    def _prefix_description(self, prefix: str) -> str:
        """What the titles of the full codes under a PCS prefix share; '' when no code is under it."""
        if prefix not in self._prefixes:
            titles, _ = self._pcs_titles()
            self._prefixes[prefix] = icd10pcs.shared_title([titles[c] for c in self._codes_under(prefix)])
        return self._prefixes[prefix]


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
