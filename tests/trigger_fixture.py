"""A small coder trained on generated notes whose codes are each mentioned by a planted phrase
(no negations, no truncation), so that its evidence can be checked against the planted spans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from model_fixtures import minilm_path, tiny_bert

from clem_icd.codes.dictionary import CodeDictionary
from clem_icd.codes.systems import CodeSystem
from clem_icd.data.dataset import DatasetWriter
from clem_icd.data.synthetic import COMMON_CODES, synthetic_note

TRIGGER_CODES = list(COMMON_CODES[:8])


def trigger_note(rng: np.random.Generator) -> tuple[list[str], str, list[tuple[int, int, str]]]:
    """(codes, text, planted spans): 1-3 codes, each mentioned once, plus filler sentences."""
    k = int(rng.integers(1, 4))
    codes = [TRIGGER_CODES[i] for i in sorted(rng.choice(len(TRIGGER_CODES), size=k, replace=False))]
    text, spans = synthetic_note(codes, rng, negated=[])
    return codes, text, spans


def write_trigger_corpus(out: Path, n_documents: int = 160, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    notes = [trigger_note(rng) for _ in range(n_documents)]
    n_train = int(0.8 * n_documents)
    with DatasetWriter(out) as writer:
        writer.write([f"trigger-{i:04d}" for i in range(n_documents)], [text for _, text, _ in notes],
                     [codes for codes, _, _ in notes], ["train"] * n_train + ["val"] * (n_documents - n_train))
        writer.finish(code_systems={c: CodeSystem.ICD10CM for c in TRIGGER_CODES}, dictionary=CodeDictionary(),
                      manifest={"source": "test", "options": {}, "inputs": []})
    return out


def train_trigger_model(folder: Path) -> Path:
    """~20 s on 2 CPU cores: a 2-layer, 32-wide BERT (random init, MiniLM tokenizer) + LAAT."""
    from clem_icd.training.recipe import build_recipe
    from clem_icd.training.trainer import train

    data = write_trigger_corpus(folder / "data")
    recipe = build_recipe({
        "model": {"encoder": str(minilm_path()), "encoder_config": tiny_bert(), "head": "laat",
                  "max_length": 512, "chunk_size": 512, "attention_dim": 32},
        "data": {"batch_size": 8, "micro_batch_size": 8, "eval_batch_size": 16},
        "optim": {"learning_rate": 3e-3, "head_learning_rate": 1e-2, "warmup_steps": 0},
        "train": {"epochs": 8, "early_stopping_patience": 10, "mixed_precision": "no", "seed": 0}})
    train(recipe, data, folder / "model")
    return folder / "model"
