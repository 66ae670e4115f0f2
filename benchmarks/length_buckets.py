"""Whole notes vs truncated ones, per note length: models side by side on the same dev notes,
grouped by each note's length in the model's tokens.

    python benchmarks/length_buckets.py --data runs/codiesp/data --codiesp ../shared/data/codiesp \
        --model whole=runs/codiesp/minilm_cross_desc --model trunc512=runs/codiesp/minilm_cross_desc_512

`--model NAME=FOLDER@N` reads the notes of that model cut at N tokens (its saved max_length
replaced at inference), e.g. `--model whole_read512=runs/codiesp/whole_e8@512`: the same trained
weights with and without the rest of each note, apart from what training on whole notes adds.
`--split` names the split that holds the dev notes: `val` (the default preparation) or `test`
(a dataset prepared with `--val-from-train`, where val is a share of train).

Per bucket: the number of notes, the Edin mAP over those notes, and CodiEsp-D / -P MAP by the
official scorer's definition (../shared/tools/codiesp_map.py on the ranking, the gold file cut to
the bucket's notes; valid codes = the dataset's codes of that system).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _shared import SHARED_DATA, codiesp_map, require, write_valid_codes

from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.labels import targets_matrix
from clem_icd.evaluation.evaluate import label_space, score_split
from clem_icd.evaluation.metrics import compute_metrics
from clem_icd.evaluation.report import write_codiesp_ranking
from clem_icd.loading import load_model
from clem_icd.model.coder import load_tokenizer

EDGES = (512, 768, 1024)  # tokens, special tokens included: <=512 | 513-768 | 769-1024 | >1024


def bucket_of(length: int) -> str:
    low = 0
    for edge in EDGES:
        if length <= edge:
            return f"{low + 1}-{edge}"
        low = edge
    return f">{EDGES[-1]}"


def folder_and_length(spec: str) -> tuple[str, str]:
    """FOLDER@N -> (FOLDER, "N"); a folder without a trailing @digits -> (FOLDER, "")."""
    folder, at, read = spec.rpartition("@")
    return (folder, read) if at and read.isdigit() else (spec, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="NAME=FOLDER, once per model")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--codiesp", type=Path, default=SHARED_DATA / "codiesp",
                        help="CodiEsp folder with dev/devD.tsv and dev/devP.tsv (default: ../shared/data/codiesp)")
    parser.add_argument("--split", default="val", choices=("val", "test"),
                        help="the split that holds the CodiEsp dev notes: val, or test after --val-from-train")
    args = parser.parse_args()
    for task in ("D", "P"):  # before any model loads
        require(args.codiesp / "dev" / f"dev{task}.tsv", f"../shared/data/codiesp/dev/dev{task}.tsv")

    dataset = PreparedDataset.load(args.data)
    dev = dataset.split(args.split)
    ids, texts, gold = dev["id"].to_list(), dev["text"].to_list(), dev["codes"].to_list()
    models = dict(item.split("=", 1) for item in args.model)
    first = load_model(folder_and_length(next(iter(models.values())))[0])
    tokenizer = load_tokenizer(first.config.tokenizer or first.config.encoder)
    lengths = [len(ids_) for ids_ in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    buckets = [bucket_of(n) for n in lengths]
    names = sorted(set(buckets), key=lambda b: int(b.strip(">").split("-")[0]))
    systems = dict(zip(dataset.code_list, dataset.codes["system"].to_list()))

    rows: dict[str, dict[str, tuple]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        valid = write_valid_codes(tmp, systems)
        gold_rows = {task: [line.split("\t") for line in (args.codiesp / "dev" / f"dev{task}.tsv").read_text().splitlines()]
                     for task in ("D", "P")}
        for name, spec in models.items():
            folder, read = folder_and_length(spec)
            model = load_model(folder)
            if read:  # truncation at inference only; the training-time setting is in the folder
                model.config.max_length = int(read)
            codes = label_space(model.codes, dataset.code_list)
            scores = score_split(model, texts, len(codes))
            targets = targets_matrix(gold, codes)
            ranking = tmp / f"{name}.tsv"
            write_codiesp_ranking(ids, scores, codes, ranking)
            for bucket in [*names, "all"]:
                keep = np.array([bucket in ("all", b) for b in buckets])
                edin = compute_metrics(scores[keep], targets[keep], 0.5)["map"]
                maps = []
                for task in ("D", "P"):
                    wanted = {i for i, k in zip(ids, keep) if k}
                    part = tmp / f"gold_{task}_{bucket}.tsv"
                    part.write_text("".join("\t".join(r) + "\n" for r in gold_rows[task] if r[0] in wanted))
                    maps.append(codiesp_map(part, ranking, valid[task]))
                rows.setdefault(bucket, {})[name] = (int(keep.sum()), edin, *maps)
    print("| tokens | notes | " + " | ".join(f"{n}: mAP | {n}: D MAP | {n}: P MAP" for n in models) + " |")
    print("| --- | ---: | " + " | ".join("---: | ---: | ---:" for _ in models) + " |")
    for bucket, per_model in rows.items():
        notes = next(iter(per_model.values()))[0]
        cells = " | ".join(f"{100 * m[1]:.1f} | {m[2]:.3f} | {m[3]:.3f}" for m in per_model.values())
        print(f"| {bucket} | {notes} | {cells} |")


if __name__ == "__main__":
    main()
