"""The token cache: exactly the ids the coder's tokenisation gives, the same bytes from one
process or several, keyed by dataset, tokenizer and max_length, and damage reported in one line."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import polars as pl
import pytest
from model_fixtures import minilm_path

from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.synthetic import make_synthetic_dataset
from clem_icd.errors import ClemError
from clem_icd.model.coder import load_tokenizer, tokenize_texts
from clem_icd.training.token_cache import (
    CACHE_ENV,
    build_cache,
    cache_key,
    cache_root,
    cached_tokens,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(minilm_path()))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "data"
    make_synthetic_dataset(path, n_documents=60, n_codes=8, seed=3)
    return path


def split_of(corpus, split: str) -> pl.DataFrame:
    return PreparedDataset.load(corpus).split(split)


def cached(corpus, split, tokenizer, max_length=64, **options):
    return cached_tokens(corpus, split, tokenizer, max_length, split_of(corpus, split)["id"].to_list(), **options)


def test_the_cache_holds_what_the_coder_tokenises(corpus, tokenizer):
    for split in ("train", "val", "test"):
        documents = split_of(corpus, split)
        notes = cached(corpus, split, tokenizer, max_length=64)
        expected = tokenize_texts(tokenizer, documents["text"].to_list(), 64)
        assert len(notes) == len(expected) == documents.height
        assert [notes[i].tolist() for i in range(len(notes))] == expected
        assert notes.lengths().tolist() == [len(e) for e in expected]
        assert notes.tokens.dtype == np.uint16  # a 30,522-token vocabulary fits in 16 bits
        assert max(len(e) for e in expected) == 64  # the long notes were truncated
        meta = notes.meta
        assert meta["notes"] == documents.height and meta["tokens"] == sum(map(len, expected))
        assert (notes.folder / "tokens.bin").stat().st_size == 2 * meta["tokens"]


def test_worker_processes_write_the_same_bytes(corpus, tokenizer, tmp_path):
    key = cache_key(corpus, "train", tokenizer, 64)
    one, several = tmp_path / "one" / "train", tmp_path / "several" / "train"
    build_cache(corpus, key, tokenizer, one, workers=1, chunk_notes=7)
    build_cache(corpus, key, tokenizer, several, workers=2, chunk_notes=7)  # 6 chunks, in 2 processes
    for name in ("tokens.bin", "offsets.npy"):
        assert (one / name).read_bytes() == (several / name).read_bytes()
    assert json.loads((one / "meta.json").read_text())["ids_sha256"] == \
        json.loads((several / "meta.json").read_text())["ids_sha256"]


def test_a_key_is_built_once_and_any_change_builds_another(corpus, tokenizer):
    first = cached(corpus, "train", tokenizer).folder
    built = (first / "tokens.bin").stat().st_mtime_ns
    assert cached(corpus, "train", tokenizer).folder == first  # the same key: read, not rebuilt
    assert (first / "tokens.bin").stat().st_mtime_ns == built

    longer = cached(corpus, "train", tokenizer, max_length=128).folder
    assert longer != first and first.is_dir()  # both lengths stay usable

    other = load_tokenizer(str(minilm_path()))
    other.add_tokens(["pneumonitisx"])  # another vocabulary: other ids
    assert cached(corpus, "train", other).folder not in (first, longer)

    # Another version of the documents: tokenised again, and this split's old caches removed.
    documents = pl.read_parquet(corpus / "documents.parquet")
    documents = documents.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("Changed note."))
                                       .otherwise(pl.col("text")).alias("text"))
    documents.write_parquet(corpus / "documents.parquet")
    renewed = cached(corpus, "train", tokenizer)
    assert renewed.folder != first and not first.exists() and not longer.exists()
    assert renewed[int(np.flatnonzero(split_of(corpus, "train")["text"].to_numpy() == "Changed note.")[0])].tolist() \
        == tokenize_texts(tokenizer, ["Changed note."], 64)[0]


def test_building_a_key_that_another_run_just_built_keeps_one_copy(corpus, tokenizer):
    notes = cached(corpus, "val", tokenizer)
    before = (notes.folder / "tokens.bin").read_bytes()
    build_cache(corpus, cache_key(corpus, "val", tokenizer, 64), tokenizer, notes.folder)  # a second builder
    assert (notes.folder / "tokens.bin").read_bytes() == before
    assert [p.name for p in cache_root(corpus).iterdir() if p.name.startswith(".")] == []


def test_damage_and_misalignment_are_one_line_errors(corpus, tokenizer):
    notes = cached(corpus, "val", tokenizer)
    ids = split_of(corpus, "val")["id"].to_list()
    with pytest.raises(ClemError, match="not the dataset's val notes in order"):
        cached_tokens(corpus, "val", tokenizer, 64, list(reversed(ids)))
    data = (notes.folder / "tokens.bin").read_bytes()
    (notes.folder / "tokens.bin").write_bytes(data[:-2])
    with pytest.raises(ClemError, match=r"token cache is damaged \(tokens.bin has") as error:
        cached(corpus, "val", tokenizer)
    assert "\n" not in str(error.value) and str(notes.folder) in str(error.value)


def test_the_cache_folder_can_live_elsewhere(corpus, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "caches"))
    notes = cached(corpus, "test", tokenizer)
    assert notes.folder.parent.parent == tmp_path / "caches"
    assert not (corpus / "token-cache").exists()


def test_tokenize_command_fills_the_cache_and_reports_it(corpus, run):
    code, out, err = run("tokenize", "--data", corpus, "--splits", "train,val", "--workers", "1",
                         f"model.encoder={minilm_path()}", "model.max_length=64")
    assert code in (0, None), err
    folders = sorted(p.name.split("-")[0] for p in (corpus / "token-cache").iterdir())
    assert folders == ["train", "val"]
    train = split_of(corpus, "train")
    assert f"│ train │ {train.height} " in out
    code, _, err = run("tokenize", "--data", corpus, "--splits", "train,nope", f"model.encoder={minilm_path()}")
    assert code == 2 and err.strip() == "error: --splits: unknown split(s) nope (train, val, test)"


def test_training_reads_tokens_not_texts(corpus, tokenizer, monkeypatch):
    """With the cache built, training's data loading never touches the note texts."""
    from clem_icd.training.trainer import coded_splits

    dataset = PreparedDataset.load(corpus, text=False)
    assert "text" not in dataset.documents.columns
    train, val = coded_splits(dataset, dataset.code_list, tokenizer, 64)
    index, ids, labels = train[3]
    assert index == 3 and ids.dtype == np.int64
    assert ids.tolist() == tokenize_texts(tokenizer, [split_of(corpus, "train")["text"][3]], 64)[0]
    assert os.path.commonpath([train.tokens.folder, corpus]) == str(corpus)


def test_a_waiting_process_reads_the_cache_another_builds(corpus, tokenizer):
    """The trainer's other processes on a node wait for the files, not in a collective that
    would time out while MIMIC-IV is tokenised (trainer.tokenise_before_processes_join)."""
    import threading

    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("notes", cached(corpus, "val", tokenizer, wait=True,
                                                                             poll_seconds=0.02)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and not (corpus / "token-cache").exists()  # waiting, building nothing
    built = cached(corpus, "val", tokenizer)
    waiter.join(timeout=60)
    assert not waiter.is_alive() and got["notes"].folder == built.folder
