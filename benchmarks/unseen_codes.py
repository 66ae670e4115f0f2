"""Codes never seen in training: a model alone vs the model with its description matcher
(`clem-icd match`), on CodiEsp dev (the prepared val split).

    python benchmarks/unseen_codes.py --model runs/codiesp/minilm_cross_desc --data runs/codiesp/data \
        --codiesp ../shared/data/codiesp [--fuse-with runs/codiesp/data/tfidf]

Prints, for each setting: CodiEsp-D and -P MAP by the official scorer's definition
(../shared/tools/codiesp_map.py, run on the ranking file; valid codes = the whole ICD-10-CM resp.
-PCS label space, the same list for every setting), the Edin mAP over the dev codes, and on the
unseen (note, code) pairs (dev gold codes that no train note has): recall@10/20/50/100 and MAP
(each note's ranking with its seen gold codes taken out, its unseen gold codes relevant). Also the
matcher's cost: load time, memory, seconds per note.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from _shared import SHARED_DATA, codiesp_map, require, write_valid_codes

from clem_icd.data.dataset import PreparedDataset
from clem_icd.data.labels import targets_matrix
from clem_icd.evaluation.evaluate import label_space, score_split
from clem_icd.evaluation.metrics import compute_metrics
from clem_icd.evaluation.report import write_codiesp_ranking
from clem_icd.loading import MATCHER_FOLDER, load_model
from clem_icd.matching.matcher import DescriptionMatcher
from clem_icd.matching.open_set import OpenSetCoder

DEPTH = 1000
KS = (10, 20, 50, 100)


def unseen_figures(scores: np.ndarray, codes: list[str], gold: list[list[str]], seen: set[str]) -> dict:
    column = {c: j for j, c in enumerate(codes)}
    hits = {k: 0 for k in KS}
    pairs, aps = 0, []
    for row, note_gold in zip(scores, gold):
        unseen = [c for c in note_gold if c not in seen]
        if not unseen:
            continue
        pairs += len(unseen)
        seen_gold = {column[c] for c in note_gold if c not in unseen and c in column}
        order = [j for j in np.argsort(-row, kind="stable")[:DEPTH + len(seen_gold)] if j not in seen_gold]
        rank = {codes[j]: r for r, j in enumerate(order, 1)}
        for k in KS:
            hits[k] += sum(1 for c in unseen if rank.get(c, DEPTH + 1) <= k)
        found = sorted(rank[c] for c in unseen if c in rank)  # AP over the first DEPTH ranks, as the files
        aps.append(sum((i + 1) / r for i, r in enumerate(found)) / len(unseen))
    return {"pairs": pairs, **{f"recall@{k}": hits[k] / max(pairs, 1) for k in KS}, "map": float(np.mean(aps))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--codiesp", type=Path, default=SHARED_DATA / "codiesp",
                        help="CodiEsp folder with dev/devD.tsv and dev/devP.tsv (default: ../shared/data/codiesp)")
    parser.add_argument("--fuse-with", type=Path, help="also: the open-set model fused (rrf) with this model")
    args = parser.parse_args()
    for task in ("D", "P"):  # before any model loads
        require(args.codiesp / "dev" / f"dev{task}.tsv", f"../shared/data/codiesp/dev/dev{task}.tsv")

    dataset = PreparedDataset.load(args.data)
    val = dataset.split("val")
    texts, gold = val["text"].to_list(), val["codes"].to_list()
    seen = {c for codes in dataset.split("train")["codes"].to_list() for c in codes}
    systems = dict(zip(dataset.code_list, dataset.codes["system"].to_list()))

    plain = load_model(args.model)
    # The matcher's own cost: the loaded model wrapped, not loaded a second time.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    open_set = OpenSetCoder(plain, DescriptionMatcher.from_pretrained(args.model / MATCHER_FOLDER))
    load_seconds = time.perf_counter() - started
    memory_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1e6
    settings = {"model": plain, "model + matcher": open_set}
    if args.fuse_with:
        from clem_icd.fusion import FusedModel

        settings["model + matcher, fused"] = FusedModel([open_set, load_model(args.fuse_with)], [1.0, 1.0])
    for j, code in enumerate(open_set.codes):
        systems.setdefault(code, open_set.code_systems[j])

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        valid = write_valid_codes(tmp, systems)
        print("| setting | CodiEsp-D MAP | CodiEsp-P MAP | mAP (dev codes) | unseen pairs | R@10 | R@20 | R@50 "
              "| R@100 | unseen MAP | s / note |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, model in settings.items():
            codes = label_space(model.codes, dataset.code_list)
            started = time.perf_counter()
            scores = score_split(model, texts, len(codes))
            per_note = (time.perf_counter() - started) / len(texts)
            ranking = tmp / "ranking.tsv"
            write_codiesp_ranking(val["id"].to_list(), scores, codes, ranking, top_k=min(DEPTH, len(codes)))
            maps = {task: codiesp_map(args.codiesp / "dev" / f"dev{task}.tsv", ranking, valid[task])
                    for task in ("D", "P")}
            dev_codes = sorted({c for codes_ in gold for c in codes_})
            index = {c: j for j, c in enumerate(codes)}
            edin = compute_metrics(scores[:, [index[c] for c in dev_codes]], targets_matrix(gold, dev_codes), 0.5)["map"]
            unseen = unseen_figures(scores, codes, gold, seen)
            print(f"| {name} | {maps['D']:.3f} | {maps['P']:.3f} | {100 * edin:.1f} | {unseen['pairs']} | "
                  + " | ".join(f"{100 * unseen[f'recall@{k}']:.1f}" for k in KS)
                  + f" | {100 * unseen['map']:.1f} | {per_note:.2f} |", flush=True)
    print(f"\nmatcher: {len(open_set.matcher.codes):,} codes, {len(open_set.matcher.text_embeddings):,} texts; "
          f"loaded in {load_seconds:.1f} s, +{memory_gb:.2f} GB peak memory")


if __name__ == "__main__":
    main()
