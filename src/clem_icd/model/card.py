"""A generated model card (README.md) for a trained coder's folder."""

from __future__ import annotations

from pathlib import Path

from clem_icd.atomic import write_text_atomic
from clem_icd.version import __version__

SHOWN_METRICS = ("f1_micro", "f1_macro", "precision@8", "map", "auc_micro")


def write_model_card(path: Path, config, metrics: dict | None) -> None:
    systems = sorted(set(config.code_systems)) if config.code_systems else ["unknown"]
    chunking = ("none (one pass)" if config.chunk_size >= config.max_length
                else f"chunks of {config.chunk_size} tokens")
    lines = [
        "# CLEM-ICD coder",
        "",
        f"Automated ICD coding model trained with CLEM-ICD {__version__}.",
        "",
        "| | |",
        "| --- | --- |",
        f"| encoder | `{config.encoder}` |",
        f"| head | {config.head} (label-wise attention, {config.attention_dim} dims) |",
        f"| label queries | {config.label_query_init} initialisation |",
        f"| context | {config.max_length} tokens, {chunking} |",
        f"| codes | {len(config.codes)} ({', '.join(systems)}) |",
        f"| decision threshold | {config.threshold:.2f} (tuned on val: argmax of micro-F1) |",
        "",
    ]
    for split, values in (metrics or {}).items():
        if isinstance(values, dict) and any(k in values for k in SHOWN_METRICS):
            lines += [f"## Metrics on {split}", "", "| metric | value |", "| --- | --- |"]
            lines += [f"| {k} | {100 * values[k]:.1f} |" for k in SHOWN_METRICS if k in values]
            lines.append("")
    lines += [
        "## Use",
        "",
        "```python",
        "from clem_icd import ICDCoder",
        "coder = ICDCoder.from_pretrained('path/to/this/folder')",
        "coder.predict(['...note text...'])",
        "```",
        "",
        "Intended for research and for assisting human coders, who check its suggestions; not for",
        "unsupervised billing. Trained on clinical notes: do not share the weights where the",
        "training data's licence forbids it (e.g. MIMIC-derived models under the PhysioNet DUA).",
        "",
    ]
    write_text_atomic("\n".join(lines), path)
