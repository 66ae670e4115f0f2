"""Tokenised notes on disk, memory-mapped: each split of a prepared dataset is tokenised once per
tokenizer and max_length, and every training process (and every later run) reads the same files.

Format: flat numpy arrays, one folder per split and key (`<split>-<key>/`):

    tokens.bin   every note's token ids one after the other (uint16 when the vocabulary fits in
                 16 bits, as ModernBERT's and BERT's do, else int32), read with np.memmap
    offsets.npy  int64, notes + 1 entries: note i is tokens[offsets[i]:offsets[i + 1]]
    meta.json    the key's parts, dtype, counts and a hash of the note ids in order

Why not Hugging Face `datasets`: it would be a heavy dependency for two arrays; a flat memmap is
what its Arrow files amount to for a list of ints, without the per-row list offsets of Arrow's
int64 plus the library; and pages are shared by every process on the node through the page
cache, so eight GPUs cost the memory of one copy. Python lists of ints (what training kept before)
cost about 36 bytes a token per process; this costs 2 or 4 bytes, once.

The key is a hash of the documents file's contents, the split, the tokenizer (its full serialised
form for fast tokenizers), max_length and this format's version: any change tokenises again.
A folder is built in a temporary sibling and renamed into place, so a reader never sees half a
cache, and two runs building the same key at once both end with one complete copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clem_icd.data.io import sha256_file
from clem_icd.errors import ClemError
from clem_icd.model.coder import tokenize_texts
from clem_icd.progress import progress_bar

FORMAT_VERSION = 1
CACHE_ENV = "CLEM_ICD_TOKEN_CACHE"  # a folder for all caches (when the data folder is read-only)
CHUNK_NOTES = 256  # notes per tokenizer call (and per task sent to a worker process)


@dataclass(frozen=True)
class TokenizedNotes:
    """One split's token ids, memory-mapped: `notes[i]` is note i's ids as a read-only array."""

    folder: Path
    tokens: np.ndarray
    offsets: np.ndarray

    @classmethod
    def open(cls, folder: Path) -> "TokenizedNotes":
        meta = json.loads((folder / "meta.json").read_text())
        offsets = np.load(folder / "offsets.npy", allow_pickle=False)
        size = (folder / "tokens.bin").stat().st_size
        dtype = np.dtype(meta["dtype"])
        if size != int(offsets[-1]) * dtype.itemsize:
            raise ClemError(f"{folder}: token cache is damaged (tokens.bin has {size} bytes, offsets say "
                            f"{int(offsets[-1]) * dtype.itemsize}); delete the folder to tokenise again")
        # An empty file cannot be memory-mapped; an empty split has no tokens to map.
        tokens = np.memmap(folder / "tokens.bin", dtype=dtype, mode="r") if size else np.zeros(0, dtype)
        return cls(folder, tokens, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def meta(self) -> dict:
        return json.loads((self.folder / "meta.json").read_text())


def encode_chunk(tokenizer, texts: list[str], max_length: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(the texts' token ids one after the other, their lengths): what the coder reads of each
    (tokenize_texts: special tokens added, truncated to max_length), in the cache's dtype."""
    token_lists = tokenize_texts(tokenizer, texts, max_length)
    lengths = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
    flat = np.fromiter((i for t in token_lists for i in t), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths


# ---------------------------------------------------------------------------------- keys


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the ids: a fast tokenizer's full serialised form
    (normaliser, pre-tokeniser, vocabulary, merges, post-processor with its special tokens);
    for a slow one its class, vocabulary and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend = backend.__class__.from_str(backend.to_str())  # a copy: no truncation state of ours
        backend.no_truncation()
        backend.no_padding()
        described = backend.to_str()
    else:
        described = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()),
                                tokenizer.all_special_tokens], ensure_ascii=True)
    return hashlib.sha256(described.encode("utf-8", "surrogatepass")).hexdigest()


def ids_sha256(ids: list[str]) -> str:
    """A hash of the note ids in order: the cache's rows must line up with the dataset's."""
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def cache_root(data_dir: Path) -> Path:
    """$CLEM_ICD_TOKEN_CACHE/<data folder name>-<hash of its path>, else DATA/token-cache."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        resolved = Path(data_dir).resolve()
        tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
        return Path(configured) / f"{resolved.name}-{tag}"
    return Path(data_dir) / "token-cache"


@dataclass(frozen=True)
class CacheKey:
    dataset_sha256: str
    split: str
    tokenizer_sha256: str
    tokenizer_name: str
    max_length: int
    format_version: int = FORMAT_VERSION

    def folder_name(self) -> str:
        parts = [self.dataset_sha256, self.split, self.tokenizer_sha256, self.max_length, self.format_version]
        return f"{self.split}-{hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]}"


def cache_key(data_dir: Path, split: str, tokenizer, max_length: int, dataset_sha256: str | None = None) -> CacheKey:
    return CacheKey(dataset_sha256 or sha256_file(Path(data_dir) / "documents.parquet"), split,
                    tokenizer_fingerprint(tokenizer), str(getattr(tokenizer, "name_or_path", "")), int(max_length))


# ---------------------------------------------------------------------------------- building


def cached_tokens(data_dir: Path, split: str, tokenizer, max_length: int, ids: list[str], *,
                  workers: int | None = None, dataset_sha256: str | None = None, wait: bool = False,
                  poll_seconds: float = 1.0) -> TokenizedNotes:
    """The split's tokens from the cache, tokenising them first if this key has no cache yet
    (`wait`: waiting for another process to). `ids` are the split's note ids in dataset order,
    checked against the cache's."""
    key = cache_key(data_dir, split, tokenizer, max_length, dataset_sha256)
    root = cache_root(data_dir)
    folder = root / key.folder_name()
    while wait and not (folder / "meta.json").is_file():
        # No timeout: if the tokenising process fails, the launcher ends the whole group.
        time.sleep(poll_seconds)
    if not (folder / "meta.json").is_file():
        build_cache(data_dir, key, tokenizer, folder, workers=workers)
    notes = TokenizedNotes.open(folder)
    if notes.meta.get("ids_sha256") != ids_sha256(ids):
        raise ClemError(f"{folder}: the token cache's notes are not the dataset's {split} notes in order; "
                        "delete the folder to tokenise again")
    return notes


def build_cache(data_dir: Path, key: CacheKey, tokenizer, folder: Path, *, workers: int | None = None,
                chunk_notes: int = CHUNK_NOTES) -> dict:
    """Tokenise one split into `folder` (built beside it, then renamed); returns its meta."""
    root = folder.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    except OSError as exc:
        raise ClemError(f"{root}: cannot write the token cache ({exc.strerror or exc.__class__.__name__}); "
                        f"set {CACHE_ENV} to a writable folder") from None
    dtype = np.dtype(np.uint16 if len(tokenizer) <= 1 << 16 else np.int32)
    started = time.perf_counter()
    try:
        ids, lengths = [], [np.zeros(1, dtype=np.int64)]
        total = _count_split(data_dir, key.split)
        with open(tmp / "tokens.bin", "wb") as out, progress_bar(f"tokenizing {key.split}", total) as update:
            for chunk_ids, (flat, chunk_lengths) in _tokenized_chunks(data_dir, key.split, total, tokenizer,
                                                                      key.max_length, dtype, workers, chunk_notes,
                                                                      tmp):
                ids += chunk_ids
                out.write(flat.tobytes())
                lengths.append(chunk_lengths)
                update(len(ids))
            out.flush()
            os.fsync(out.fileno())
        offsets = np.cumsum(np.concatenate(lengths))
        np.save(tmp / "offsets.npy", offsets, allow_pickle=False)
        meta = {"format_version": key.format_version, "split": key.split, "dtype": dtype.name,
                "notes": len(ids), "tokens": int(offsets[-1]), "max_length": key.max_length,
                "tokenizer": key.tokenizer_name, "tokenizer_sha256": key.tokenizer_sha256,
                "dataset_sha256": key.dataset_sha256, "ids_sha256": ids_sha256(ids),
                "seconds": round(time.perf_counter() - started, 2)}
        (tmp / "tokenizer.json").unlink(missing_ok=True)  # the workers' copy (_tokenized_chunks)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not another run's finished copy: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_stale(root, key)
    return meta


def _remove_stale(root: Path, key: CacheKey) -> None:
    """Caches of this split made from another version of the documents can never be read
    again: remove them (a process still reading one keeps its open mapping)."""
    for other in root.glob(f"{key.split}-*"):
        try:
            if json.loads((other / "meta.json").read_text()).get("dataset_sha256") != key.dataset_sha256:
                shutil.rmtree(other, ignore_errors=True)
        except (OSError, ValueError):
            continue  # a folder being built, or not ours


def _count_split(data_dir: Path, split: str) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    column = pq.read_table(Path(data_dir) / "documents.parquet", columns=["split"])["split"]
    return int(pc.sum(pc.equal(column, split)).as_py() or 0)


def _split_chunks(data_dir: Path, split: str, chunk_notes: int) -> Iterator[tuple[list[str], list[str]]]:
    """(ids, texts) of the split's notes in dataset order, a few at a time: the texts of a
    MIMIC-sized dataset are never all in memory."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(Path(data_dir) / "documents.parquet")
    for batch in parquet.iter_batches(batch_size=chunk_notes, columns=["id", "text", "split"]):
        batch = batch.filter(pc.equal(batch.column("split"), split))
        if batch.num_rows:
            yield batch.column("id").to_pylist(), batch.column("text").to_pylist()


def _tokenized_chunks(data_dir: Path, split: str, notes: int, tokenizer, max_length: int, dtype,
                      workers: int | None, chunk_notes: int, scratch: Path) -> Iterator[tuple[list[str], tuple[np.ndarray, np.ndarray]]]:
    """(ids, encode_chunk's arrays) per chunk, in order; in `workers` processes when there are
    several (the tokenizer handed to them as a file in `scratch`)."""
    workers = default_workers() if workers is None else max(1, workers)
    # A process costs a second or so to start: no more of them than there are chunks. A slow
    # (pure Python) tokenizer has no serialised form to send: it runs here.
    workers = min(workers, -(-notes // chunk_notes))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    chunks = _split_chunks(data_dir, split, chunk_notes)
    if workers <= 1 or backend is None:
        for ids, texts in chunks:
            yield ids, encode_chunk(tokenizer, texts, max_length, dtype)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from clem_icd.training import tokenize_worker

    # spawn, not fork: the parent has torch's and the tokenizer's threads running, which a
    # forked child would inherit in an undefined state.
    context = multiprocessing.get_context("spawn")
    # A path, not the serialised tokenizer itself (hundreds of KB): a worker that dies as it
    # starts then fails the pool at once, where a parent blocked writing its start-up data to the
    # dead worker's pipe would wait for ever.
    serialised = scratch / "tokenizer.json"
    serialised.write_text(backend.to_str())
    options = (str(serialised), max_length, getattr(tokenizer, "truncation_side", "right"), np.dtype(dtype).name)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=tokenize_worker.start,
                             initargs=options) as pool:
        pending: deque = deque()
        for ids, texts in chunks:
            pending.append((ids, pool.submit(tokenize_worker.encode, texts)))
            if len(pending) >= 2 * workers:  # a bounded window: memory stays a few chunks
                done_ids, future = pending.popleft()
                yield done_ids, future.result()
        while pending:
            done_ids, future = pending.popleft()
            yield done_ids, future.result()


def default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
