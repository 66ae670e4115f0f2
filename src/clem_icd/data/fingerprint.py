"""What identifies a prepared dataset: for a saved model to record what it was fitted on, and
for a resumed training to check that it goes on with the same data (and to say what changed
when it does not)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from clem_icd.data.dataset import SPLITS, PreparedDataset

DATASET_FILES = ("manifest.json", "codes.tsv", "documents.parquet")


def dataset_fingerprint(dataset: PreparedDataset) -> str | None:
    """sha256 over the prepared folder's files (manifest, code table, documents): a dataset
    re-prepared or edited gets another fingerprint. None when the folder's files are not there
    (a dataset built in memory), which never matches."""
    path = Path(dataset.path)
    if not all((path / name).is_file() for name in DATASET_FILES):
        return None
    from clem_icd.data.io import sha256_file

    digest = hashlib.sha256()
    for name in DATASET_FILES:
        # documents.parquet through the dataset's cached hash: it can be gigabytes, and the
        # token cache needs the same hash.
        sha = dataset.documents_sha256 if name == "documents.parquet" else sha256_file(path / name)
        digest.update(f"{name}\t{sha}\n".encode())
    return digest.hexdigest()


def dataset_record(dataset: PreparedDataset) -> dict:
    """What a training records about its dataset (train_inputs.json): the fingerprint, and the
    parts `dataset_changes` compares (documents hash, code list in label order, the manifest's
    preparation options, documents per split)."""
    counts = dataset.documents["split"].value_counts()
    by_split = dict(zip(counts["split"].to_list(), counts["count"].to_list()))
    return {"path": str(dataset.path), "fingerprint": dataset_fingerprint(dataset),
            "documents_sha256": dataset.documents_sha256, "codes": dataset.code_list,
            "options": dataset.manifest.get("options", {}),
            "splits": {split: int(by_split.get(split, 0)) for split in SPLITS}}


def dataset_changes(saved: dict, current: dict) -> list[str]:
    """What differs between two `dataset_record`s, in words (no note text: hashes, codes,
    options, counts); empty when the training would read the same data. The manifest's own
    bytes (its creation time) and the code descriptions are not compared: preparing the same
    inputs again gives the same documents, and a resumed run reads no description."""
    changes = []
    if saved.get("documents_sha256") != current.get("documents_sha256"):
        changes.append(f"documents.parquet (sha256 {_short(saved.get('documents_sha256'))} → "
                       f"{_short(current.get('documents_sha256'))})")
    old, new = list(saved.get("codes") or []), list(current.get("codes") or [])
    if old != new:
        old_set, new_set = set(old), set(new)
        added, removed = [c for c in new if c not in old_set], [c for c in old if c not in new_set]
        if added or removed:
            changes.append("codes: " + ", ".join(part for part in (_listed(added, "added"), _listed(removed, "removed"))
                                                 if part))
        else:
            changes.append("codes: the same codes in another order")
    old_options, new_options = saved.get("options") or {}, current.get("options") or {}
    options = [f"{key} {_value(old_options, key)} → {_value(new_options, key)}"
               for key in sorted(set(old_options) | set(new_options))
               if old_options.get(key, ...) != new_options.get(key, ...)]
    if options:
        changes.append("manifest options: " + ", ".join(options))
    old_splits, new_splits = saved.get("splits") or {}, current.get("splits") or {}
    splits = [f"{split} {old_splits.get(split, 0)} → {new_splits.get(split, 0)}"
              for split in SPLITS if old_splits.get(split, 0) != new_splits.get(split, 0)]
    if splits:
        changes.append("documents per split: " + ", ".join(splits))
    return changes


def _short(sha: str | None) -> str:
    return f"{sha[:12]}…" if sha else "unknown"


def _listed(codes: list[str], what: str, shown: int = 3) -> str:
    if not codes:
        return ""
    more = f", +{len(codes) - shown} more" if len(codes) > shown else ""
    return f"{len(codes)} {what} ({', '.join(codes[:shown])}{more})"


def _value(options: dict, key: str) -> str:
    return json.dumps(options[key], sort_keys=True) if key in options else "(absent)"
