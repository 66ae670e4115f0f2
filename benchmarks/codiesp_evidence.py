"""Evidence quality on CodiEsp-X (Spanish originals; gold spans in devX.tsv / trainX.tsv).

For each explanation method, with a model trained on the Spanish text (`clem-icd prepare codiesp
--language es`, then `clem-icd train`):
- `predicted`: the codes the model reports (its tuned threshold), explained - what `clem-icd
  predict --explain` gives a user; scored with the word metrics and the official CodiEsp-X
  matching;
- `gold`: the gold codes explained, whatever their probability (the setting of Edin et al.
  2024: evidence quality apart from code prediction).
Spans are computed from the same attributions at several evidence thresholds, so the threshold
can be chosen on one split and reported on another.

    python benchmarks/codiesp_evidence.py --model runs/codiesp_es/minilm_cross_desc \
        --codiesp ../shared/data/codiesp --split dev --methods attention,attingrad --out runs/codiesp_es/evidence_dev.json

Needs the CodiEsp distribution: --codiesp, by default ../shared/data/codiesp beside the repository
(or $CLEM_ICD_SHARED_DATA/codiesp), with SPLIT/SPLITX.tsv and SPLIT/text_files; without it, it
stops with one line "error: needs ../shared/data/codiesp/...: not found" and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _shared import SHARED_DATA, require

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clem_icd.evaluation.evidence_metrics import codiesp_x_metrics, read_codiesp_x, token_metrics  # noqa: E402
from clem_icd.inference import NotePredictor, PredictOptions  # noqa: E402
from clem_icd.inference.inputs import read_notes  # noqa: E402
from clem_icd.inference.spans import evidence_spans  # noqa: E402
from clem_icd.model import ICDCoder  # noqa: E402

THRESHOLDS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2)


class SpansAtThresholds(NotePredictor):
    """Evidence as {threshold: spans} from one attribution pass."""

    def _spans(self, texts, notes, window, token_scores):
        note = notes[window.note]
        return {t: evidence_spans(texts[window.note], note.spans[window.start:window.end],
                                  note.words[window.start:window.end], token_scores, threshold=t,
                                  words=self.options.evidence_words, max_spans=self.options.max_spans)
                for t in THRESHOLDS}


def canonical(code: str) -> str:
    return code.upper().replace(".", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--codiesp", help="CodiEsp folder (train/, dev/); default ../shared/data/codiesp")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--methods", default="attention,attingrad")
    parser.add_argument("--settings", default="predicted,gold")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    folder, name = ((Path(args.codiesp), args.codiesp) if args.codiesp
                    else (SHARED_DATA / "codiesp", "../shared/data/codiesp"))
    root = Path(folder) / args.split
    for part in (f"{args.split}X.tsv", "text_files"):
        require(root / part, f"{name}/{args.split}/{part}")
    gold_fragments, gold_whole = read_codiesp_x(root / f"{args.split}X.tsv")
    records = [r for r in read_notes([str(root / "text_files")]) if r.error is None]
    records = sorted(records, key=lambda r: r.id)[: args.limit]
    ids, texts = [r.id for r in records], [r.text for r in records]
    keep = set(ids)
    gold_fragments = {k: v for k, v in gold_fragments.items() if k[0] in keep}
    gold_whole = {k: v for k, v in gold_whole.items() if k[0] in keep}

    coder = ICDCoder.from_pretrained(args.model)
    known = {canonical(c): c for c in coder.codes}
    gold_codes = [[known[code] for (note, code) in gold_fragments if note == i and code in known] for i in ids]
    results = {"model": args.model, "split": args.split, "notes": len(ids), "gold_pairs": len(gold_fragments),
               "gold_pairs_with_known_code": sum(map(len, gold_codes)), "runs": []}
    for method in args.methods.split(","):
        for setting in args.settings.split(","):
            predictor = SpansAtThresholds(coder, PredictOptions(explain=method, evidence_words=10, max_spans=5))
            start = time.perf_counter()
            output = predictor.predict(texts, codes=gold_codes if setting == "gold" else None)
            seconds = time.perf_counter() - start
            for threshold in THRESHOLDS:
                predicted = {(i, canonical(c["code"])): [(s["start"], s["end"]) for s in c["evidence"][threshold]]
                             for i, note in zip(ids, output) for c in note["codes"]}
                run = {"method": method, "setting": setting, "evidence_threshold": threshold,
                       "seconds": round(seconds, 1), "tokens": token_metrics(gold_fragments, predicted, dict(zip(ids, texts))),
                       "codiesp_x": codiesp_x_metrics(gold_whole, predicted)}
                results["runs"].append(run)
                t, x = run["tokens"], run["codiesp_x"]
                print(f"{method:<11}{setting:<10}{threshold:>6.2f}  words all P/R/F1 {100 * t['all']['precision']:5.1f} "
                      f"{100 * t['all']['recall']:5.1f} {100 * t['all']['f1']:5.1f} IoU {100 * t['all']['iou']:5.1f} | "
                      f"explained F1 {100 * t['explained']['f1']:5.1f} IoU {100 * t['explained']['iou']:5.1f} "
                      f"({t['explained']['rows']} rows) | CodiEsp-X P/R/F1 {100 * x['precision']:5.1f} "
                      f"{100 * x['recall']:5.1f} {100 * x['f1']:5.1f}  [{seconds:.0f} s]", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
