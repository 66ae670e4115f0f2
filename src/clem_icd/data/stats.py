"""Descriptive statistics of a prepared dataset (`clem-icd data stats`).

Everything is computed column-wise with Polars; only the optional tokenizer runs over the texts,
in batches. The result is a plain, JSON-ready dict holding numbers and codes, never note text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from clem_icd.data.dataset import SPLITS, PreparedDataset
from clem_icd.errors import ClemError
from clem_icd.progress import progress_bar

PERCENTILES = (5, 25, 50, 75, 95)
RARE_THRESHOLDS = (5, 10)
UNKNOWN_SYSTEM = "unknown"  # a code in documents.parquet that codes.tsv does not list


def dataset_stats(path: Path | str, tokenizer: str | None = None, batch_size: int = 1024) -> dict:
    """Statistics per split and overall ("all"); token lengths only when `tokenizer` is given."""
    path = Path(path)
    if not path.is_dir():
        raise ClemError(f"{path}: no such folder (expected a prepared dataset)")
    ds = PreparedDataset.load(path)
    # Null lists/texts count as empty rather than failing: stats should describe, not validate.
    docs = ds.documents.with_row_index("row").with_columns(
        pl.col("codes").fill_null([]), pl.col("text").fill_null(""))
    lengths = docs.select(
        "split",
        n_labels=pl.col("codes").list.len(),
        # \S+ counts whitespace-separated words; split(" ") would count empty strings between
        # repeated spaces and would not split on newlines or tabs.
        n_words=pl.col("text").str.count_matches(r"\S+"),
    )
    if tokenizer is not None:
        tokens = token_lengths(docs["text"], tokenizer, batch_size)
        lengths = lengths.with_columns(n_tokens=pl.Series(tokens))

    # One row per (document, code); `unique` guards against a code listed twice in a document.
    pairs = (docs.select("row", "split", code=pl.col("codes")).explode("code")
             .drop_nulls("code").unique(["row", "code"]))
    systems = dict(zip(ds.codes["code"].to_list(), ds.codes["system"].to_list()))

    present = [s for s in SPLITS if s in lengths["split"]]
    present += sorted(set(lengths["split"].unique().drop_nulls()) - set(SPLITS))
    train_codes = set(pairs.filter(pl.col("split") == "train")["code"])

    result: dict = {"dataset": str(path), "tokenizer": tokenizer, "splits": {}}
    for split in present:
        result["splits"][split] = _block(lengths.filter(pl.col("split") == split),
                                         pairs.filter(pl.col("split") == split), systems,
                                         None if split == "train" else train_codes)
    non_train = pairs.filter(pl.col("split") != "train")
    result["all"] = _block(lengths, pairs, systems, None)
    result["all"]["codes_not_in_train"] = _unseen(non_train, train_codes)
    result["rare_codes"] = _rare(pairs, set(systems))
    return result


def token_lengths(texts: pl.Series, name_or_path: str, batch_size: int = 1024) -> np.ndarray:
    """Tokens per text with a Hugging Face tokenizer: no special tokens, no truncation."""
    from transformers import AutoTokenizer  # slow import: only when asked for

    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise ClemError(f"tokenizer '{name_or_path}' could not be loaded "
                        f"({exc.__class__.__name__}); give a local folder or a model name "
                        "available offline") from None
    out = np.zeros(len(texts), dtype=np.int64)
    with progress_bar("tokenizing", len(texts)) as update:
        for start in range(0, len(texts), batch_size):
            batch = texts.slice(start, batch_size).to_list()
            # verbose=False: no "sequence longer than the model maximum" warning per long note.
            ids = tok(batch, add_special_tokens=False, truncation=False, verbose=False,
                      return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            out[start:start + len(batch)] = [len(x) for x in ids]
            update(start + len(batch))
    return out


def _block(lengths: pl.DataFrame, pairs: pl.DataFrame, systems: dict[str, str],
           train_codes: set[str] | None) -> dict:
    codes = pairs["code"].unique()
    system = pl.col("code").replace_strict(systems, default=UNKNOWN_SYSTEM)
    by_system = pl.DataFrame({"code": codes}).group_by(system=system).len().sort("system")
    labels = lengths["n_labels"].to_numpy()
    block = {
        "documents": lengths.height,
        "documents_without_codes": int((labels == 0).sum()),
        "codes": {"total": len(codes),
                  "by_system": dict(zip(by_system["system"], by_system["len"]))},
        "labels_per_document": {
            "mean": _num(labels, np.mean), "median": _num(labels, np.median),
            "min": _num(labels, np.min), "max": _num(labels, np.max)},
        "words": _percentiles(lengths["n_words"]),
    }
    if "n_tokens" in lengths.columns:
        block["tokens"] = _percentiles(lengths["n_tokens"])
    if train_codes is not None:
        block["codes_not_in_train"] = _unseen(pairs, train_codes)
    return block


def _unseen(pairs: pl.DataFrame, train_codes: set[str]) -> dict:
    codes = sorted(set(pairs["code"]) - train_codes)
    return {"count": len(codes), "codes": codes}


def _rare(pairs: pl.DataFrame, listed: set[str]) -> dict:
    """Share of all codes (codes.tsv plus any only in documents) with few training documents;
    codes absent from train count as 0."""
    all_codes = listed | set(pairs["code"])
    train_docs = pairs.filter(pl.col("split") == "train").group_by("code").len()
    counts = dict(zip(train_docs["code"], train_docs["len"]))
    # A loop over codes (thousands), not over documents.
    freq = np.array([counts.get(c, 0) for c in all_codes], dtype=np.int64)
    out: dict = {"codes": len(all_codes)}
    for k in RARE_THRESHOLDS:
        n = int((freq < k).sum())
        share = n / len(freq) if len(freq) else None
        out[f"fewer_than_{k}_train_documents"] = {"count": n, "share": share}
    return out


def _percentiles(column: pl.Series) -> dict:
    values = column.to_numpy()
    if len(values) == 0:
        return {**{f"p{p}": None for p in PERCENTILES}, "max": None}
    pct = np.percentile(values, PERCENTILES)  # linear interpolation, numpy's default
    return {**{f"p{p}": float(v) for p, v in zip(PERCENTILES, pct)}, "max": int(values.max())}


def _num(values: np.ndarray, fn) -> float | int | None:
    if len(values) == 0:
        return None
    v = fn(values)
    return int(v) if fn in (np.min, np.max) else float(v)
