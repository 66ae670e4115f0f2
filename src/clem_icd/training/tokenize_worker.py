"""What a token-cache worker process runs: the fast tokenizer's Rust core alone, which imports in
a fraction of a second, where the Hugging Face tokenizer object would bring transformers and
torch into every worker (seconds each). tests/test_token_cache.py pins that the ids equal the
Hugging Face tokenizer's own (`tokenize_texts`)."""

from __future__ import annotations

import os

import numpy as np

_state: tuple = ()  # (tokenizers.Tokenizer, dtype) of this worker process


def start(path: str, max_length: int, truncation_side: str, dtype: str) -> None:
    """Worker initializer: the tokenizer from a file of what `backend_tokenizer.to_str()` gives,
    truncating as a Hugging Face tokenizer called with truncation=True, max_length does."""
    from tokenizers import Tokenizer

    global _state
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread a process: the processes are the parallelism
    tokenizer = Tokenizer.from_file(path)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length, stride=0, strategy="longest_first", direction=truncation_side)
    _state = (tokenizer, np.dtype(dtype))


def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(the texts' ids one after the other, their lengths), special tokens added."""
    tokenizer, dtype = _state
    encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    flat = np.fromiter((i for e in encodings for i in e.ids), dtype=dtype, count=int(lengths.sum()))
    return flat, lengths
