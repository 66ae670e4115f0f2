"""Evidence quality where the truth is known: a small coder trained on generated notes whose codes
are each mentioned by one planted phrase (tests/trigger_fixture.py), explained on fresh notes.

    python benchmarks/synthetic_evidence.py [--notes 100]

Prints, per method, how often the best span overlaps the planted phrase of a correctly reported
code, and the word metrics of `clem-icd evaluate-evidence` against the planted spans.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from trigger_fixture import train_trigger_model, trigger_note  # noqa: E402

from clem_icd.evaluation.evidence_metrics import token_metrics  # noqa: E402
from clem_icd.model import ICDCoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        coder = ICDCoder.from_pretrained(train_trigger_model(Path(folder)))
    rng = np.random.default_rng(123)
    notes = [trigger_note(rng) for _ in range(args.notes)]
    texts = [text for _, text, _ in notes]
    gold = {(str(i), code.replace(".", "")): [(s, e)] for i, (_, _, spans) in enumerate(notes) for s, e, code in spans}
    for method in ("attention", "attingrad", "inputxgrad"):
        predicted, hits = {}, []
        for i, codes in enumerate(coder.predict(texts, explain=method)):
            for code in codes:
                key = (str(i), code["code"].replace(".", ""))
                predicted[key] = [(e["start"], e["end"]) for e in code["evidence"]]
                if key in gold and code["evidence"]:
                    (start, end), top = gold[key][0], code["evidence"][0]
                    hits.append(top["start"] < end and start < top["end"])
        words = token_metrics(gold, predicted, {str(i): t for i, t in enumerate(texts)})
        print(f"{method:<11} best span on the planted phrase {100 * np.mean(hits):5.1f}% of {len(hits)} | words "
              + " | ".join(f"{name} P/R/F1 {100 * m['precision']:.1f} {100 * m['recall']:.1f} {100 * m['f1']:.1f} "
                           f"IoU {100 * m['iou']:.1f} ({m['rows']} rows)" for name, m in words.items()))


if __name__ == "__main__":
    main()
