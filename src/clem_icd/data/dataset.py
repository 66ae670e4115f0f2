"""The prepared-dataset folder that every source is turned into.

    documents.parquet  id: str, text: str, codes: list[str], split: train|val|test
    codes.tsv          code, system, description, train_count (the label order for models)
    manifest.json      source, versions, options, counts, sha256 of inputs, code problems

A folder is written to a temporary sibling and renamed into place at the end, so a failed or
interrupted preparation never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from clem_icd.atomic import publish_folder
from clem_icd.codes import CodeDictionary, CodeReport, CodeSystem
from clem_icd.errors import ClemError
from clem_icd.version import __version__

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "dev": "val", "valid": "val",
                 "validation": "val", "test": "test"}
FORMAT_VERSION = 1
DOCUMENTS_SCHEMA = pa.schema(
    [("id", pa.string()), ("text", pa.string()), ("codes", pa.list_(pa.string())), ("split", pa.string())]
)


def canonical_split(value: str | None) -> str | None:
    """train / val / test for a split name or a common alias (dev, validation); None if unknown."""
    if value is None:
        return None
    return SPLIT_ALIASES.get(str(value).strip().lower())


class DatasetWriter:
    """Writes documents in batches, counts as it goes, and publishes the folder atomically.

    Use as a context manager; `finish()` publishes, leaving the block without it discards."""

    def __init__(self, out: Path, *, overwrite: bool = False):
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise ClemError(f"{self.out}: output folder exists (pass --overwrite to replace it)")
        self.overwrite = overwrite
        self.split_counts: Counter = Counter()
        self.code_counts: dict[str, Counter] = {s: Counter() for s in SPLITS}
        self.documents_without_codes = 0
        self._ids: set[str] = set()
        self._tmp: Path | None = None
        self._writer: pq.ParquetWriter | None = None

    def __enter__(self) -> "DatasetWriter":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self._writer = pq.ParquetWriter(self._tmp / "documents.parquet", DOCUMENTS_SCHEMA,
                                        compression="zstd")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp is not None and self._tmp.exists():
            shutil.rmtree(self._tmp, ignore_errors=True)

    def write(self, ids: list[str], texts: list[str] | pa.Array, codes: list[list[str]], splits: list[str]) -> None:
        for doc_id, doc_codes, split in zip(ids, codes, splits, strict=True):
            if doc_id in self._ids:
                raise ClemError(f"document id '{doc_id}' occurs twice")
            if split not in SPLITS:
                raise ClemError(f"document '{doc_id}': split '{split}' is not one of {', '.join(SPLITS)}")
            self._ids.add(doc_id)
            self.split_counts[split] += 1
            self.code_counts[split].update(doc_codes)
            self.documents_without_codes += not doc_codes
        table = pa.table(
            {"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string()),
             "codes": pa.array(codes, pa.list_(pa.string())), "split": pa.array(splits, pa.string())},
            schema=DOCUMENTS_SCHEMA,
        )
        self._writer.write_table(table)

    def finish(self, *, code_systems: dict[str, CodeSystem], dictionary: CodeDictionary,
               manifest: dict) -> dict:
        """Write codes.tsv and manifest.json, then move the folder into place. Returns the manifest."""
        self._writer.close()
        self._writer = None
        if not self._ids:
            raise ClemError("no documents left to write: check the inputs and options")
        present: Counter = Counter()
        for split in SPLITS:
            present.update(self.code_counts[split])
        missing_system = [c for c in present if c not in code_systems]
        if missing_system:  # a bug in a source module, not bad input
            raise RuntimeError(f"no code system recorded for {missing_system[:5]}")

        codes = sorted(present, key=lambda c: (code_systems[c].value, c))
        report = CodeReport()
        report.check(dictionary, Counter({(code_systems[c], c): present[c] for c in codes}))
        described = [dictionary.describe_with_rule(c, code_systems[c]) for c in codes]
        rules: Counter = Counter()
        for code, (_, rule) in zip(codes, described):
            rules[(code_systems[code].value, rule or "none")] += 1
        pl.DataFrame(
            {
                "code": codes,
                "system": [code_systems[c].value for c in codes],
                "description": [description or "" for description, _ in described],
                "train_count": [self.code_counts["train"][c] for c in codes],
            },
            schema={"code": pl.String, "system": pl.String, "description": pl.String,
                    "train_count": pl.Int64},
        ).write_csv(self._tmp / "codes.tsv", separator="\t")

        manifest = {
            "format_version": FORMAT_VERSION,
            "created_by": f"clem-icd {__version__}",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **manifest,
            "counts": {
                "documents": len(self._ids),
                "by_split": {s: self.split_counts[s] for s in SPLITS},
                "codes": len(codes),
                "codes_by_system": dict(Counter(code_systems[c].value for c in codes)),
                "documents_without_codes": self.documents_without_codes,
                **manifest.get("counts", {}),
            },
            "code_check": {"dictionaries": dictionary.sources, "packages": dictionary.package_versions(),
                           **report.as_manifest()},
            # codes per system by the rule that described them ("none": no description); the
            # rules are listed in clem_icd.codes.dictionary
            "descriptions": {system: {rule: n for (s, rule), n in sorted(rules.items()) if s == system}
                             for system in sorted({s for s, _ in rules})},
        }
        (self._tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        self._publish()
        self.report = report
        return manifest

    def _publish(self) -> None:
        publish_folder(self._tmp, self.out)
        self._tmp = None


@dataclass
class Prepared:
    """What a preparation returns: the manifest as written to manifest.json, and the code check
    (unknown codes) for the console."""

    manifest: dict
    report: CodeReport


def input_record(path: Path) -> dict:
    """Manifest entry for an input file: path, size and sha256."""
    from clem_icd.data.io import sha256_file

    path = Path(path)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


@dataclass
class PreparedDataset:
    """A prepared folder, read back."""

    path: Path
    documents: pl.DataFrame
    codes: pl.DataFrame
    manifest: dict

    @classmethod
    def load(cls, path: Path | str, *, text: bool = True) -> "PreparedDataset":
        """The dataset; `text=False` leaves the note texts on disk (training reads tokens from
        the token cache: a MIMIC-sized dataset's texts are gigabytes)."""
        path = Path(path)
        for name in ("documents.parquet", "codes.tsv", "manifest.json"):
            if not (path / name).is_file():
                raise ClemError(f"{path / name}: not found (is {path} a prepared dataset? see `clem-icd prepare --help`)")
        columns = None if text else ["id", "codes", "split"]
        documents = pl.read_parquet(path / "documents.parquet", columns=columns)
        codes = pl.read_csv(path / "codes.tsv", separator="\t", schema_overrides={
            "code": pl.String, "system": pl.String, "description": pl.String, "train_count": pl.Int64})
        manifest = json.loads((path / "manifest.json").read_text())
        return cls(path=path, documents=documents, codes=codes, manifest=manifest)

    @cached_property
    def documents_sha256(self) -> str:
        """Of documents.parquet as it is on disk (part of the token cache's key); computed once."""
        from clem_icd.data.io import sha256_file

        return sha256_file(self.path / "documents.parquet")

    @property
    def code_list(self) -> list[str]:
        return self.codes["code"].to_list()

    def split(self, name: str) -> pl.DataFrame:
        return self.documents.filter(pl.col("split") == name)
