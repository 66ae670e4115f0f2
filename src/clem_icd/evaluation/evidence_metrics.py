"""Evidence evaluation: predicted evidence spans against gold spans (CodiEsp-X, MDACE).

Units are words (`\\w+` runs, Unicode) of the original note; a word belongs to a span when
their character ranges overlap. Rows are (note, code) pairs with gold evidence, as in Edin et
al. (2024): evidence of a code without gold evidence is not scored by the token metrics.

- token precision / recall / F1: micro over rows (TP = |pred ∩ gold| words, summed).
- IoU: |pred ∩ gold| / |pred ∪ gold| words per row, averaged over rows.
- Both for `all` gold rows (a code the model did not explain has no predicted words) and for
  the `explained` rows (the model gave evidence for that code).
- `codiesp_x`: the CodiEsp-X track's official matching - a predicted (note, code) pair is
  correct when one of its spans contains a gold span of that pair, overhanging it by at most
  10 characters on each side (discontinuous gold spans count from first start to last end);
  micro P / R / F1 over unique (note, code) pairs.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path

from clem_icd.errors import ClemError

WORD = re.compile(r"\w+")
CODIESP_TOLERANCE = 10

Spans = dict[tuple[str, str], list[tuple[int, int]]]  # (note id, code) -> character spans


def _canonical(code: str) -> str:
    """Codes of either spelling (CodiEsp lower case, MDACE dotted) in one comparable form."""
    return "".join(code.split()).upper().replace(".", "")


def read_codiesp_x(path: Path | str) -> tuple[Spans, Spans]:
    """A CodiEsp-X file: gold (id, label, code, text, "s e;s e") or predictions (id, "s e",
    label, code). Returns (fragments, whole) spans: each discontinuous piece, and first start
    to last end."""
    path = Path(path)
    fragments: Spans = defaultdict(list)
    whole: Spans = defaultdict(list)
    try:
        handle = open(path, encoding="utf-8", newline="")
    except OSError as exc:
        raise ClemError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) == 5:
                note, _label, code, _text, position = row
            elif len(row) == 4:
                note, position, _label, code = row
            else:
                raise ClemError(f"{path}, line {number}: {len(row)} columns; CodiEsp-X has 5 (gold) or 4 (predictions)")
            pieces = []
            for piece in position.split(";"):
                try:
                    start, end = (int(v) for v in piece.split())
                except ValueError:
                    raise ClemError(f"{path}, line {number}: position must be 'start end' (or 's e;s e')") from None
                if not 0 <= start <= end:
                    raise ClemError(f"{path}, line {number}: span {start} {end} ends before it starts")
                pieces.append((start, end))
            key = (note, _canonical(code))
            # The official gold files hold a few empty fragments ('1446 1446'): nothing to match.
            fragments[key].extend(piece for piece in pieces if piece[0] < piece[1])
            whole[key].append((pieces[0][0], pieces[-1][1]))
    return dict(fragments), dict(whole)


def read_prediction_jsonl(path: Path | str) -> Spans:
    """Evidence spans of a `clem-icd predict --explain ...` JSONL file."""
    path = Path(path)
    spans: Spans = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ClemError(f"{path}, line {number}: not valid JSON") from None
            if "error" in record:
                continue
            for code in record.get("codes", []):
                if "evidence" not in code:
                    raise ClemError(f"{path}, line {number}: codes without 'evidence' (predict with --explain)")
                spans[(str(record["id"]), _canonical(code["code"]))] = [(e["start"], e["end"]) for e in code["evidence"]]
    return spans


MDACE_SYSTEMS = ("ICD-10-CM", "ICD-10-PCS", "ICD-9-CM", "ICD-9-PCS")  # not Profee's CPT


def read_mdace(folder: Path | str, code_systems: tuple[str, ...] = MDACE_SYSTEMS,
               category: str | None = "Discharge summary") -> Spans:
    """MDACE (Cheng et al. 2023) annotation files, `<hadm_id>-ICD-10.json` (or the ICD-9
    folder's): gold spans per (note_id, code), note_id being MIMIC-III NOTEEVENTS ROW_ID and
    offsets character offsets into its TEXT. Only notes of `category` (None: all; Edin et al.
    2024 use discharge summaries) and codes of `code_systems` are kept."""
    folder = Path(folder)
    files = sorted(folder.rglob("*.json")) if folder.is_dir() else [folder]
    if not files:
        raise ClemError(f"{folder}: no MDACE .json files")
    spans: Spans = defaultdict(list)
    for file in files:
        try:
            admission = json.loads(file.read_text(encoding="utf-8"))
            notes = admission["notes"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            raise ClemError(f"{file}: not an MDACE annotation file (expected JSON with 'notes')") from None
        for note in notes:
            if category is not None and note.get("category") != category:
                continue
            for item in note.get("annotations", []):
                if item.get("code_system") not in code_systems:
                    continue
                try:
                    key = (str(note["note_id"]), _canonical(item["code"]))
                    spans[key].append((int(item["begin"]), int(item["end"])))
                except (KeyError, TypeError, ValueError):
                    raise ClemError(f"{file}: annotation without note_id, code, begin or end") from None
    return dict(spans)


def _words(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in WORD.finditer(text)]


def _covered(words: list[tuple[int, int]], spans: list[tuple[int, int]]) -> set[int]:
    return {i for i, (ws, we) in enumerate(words) for s, e in spans if ws < e and s < we}


def _prf(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def token_metrics(gold: Spans, predicted: Spans, texts: dict[str, str]) -> dict:
    rows = sorted(gold)
    missing = sorted({note for note, _ in rows if note not in texts})
    if missing:
        raise ClemError(f"no text for {len(missing)} note(s) with gold evidence, e.g. {', '.join(missing[:3])}")
    words = {note: _words(texts[note]) for note, _ in rows}
    groups = {"all": rows, "explained": [r for r in rows if predicted.get(r)]}
    result = {}
    for name, group in groups.items():
        tp = fp = fn = 0
        ious = []
        for note, code in group:
            g = _covered(words[note], gold[note, code])
            p = _covered(words[note], predicted.get((note, code), []))
            tp, fp, fn = tp + len(g & p), fp + len(p - g), fn + len(g - p)
            ious.append(len(g & p) / len(g | p) if g | p else 0.0)
        result[name] = {**_prf(tp, fp, fn), "iou": sum(ious) / len(ious) if ious else 0.0, "rows": len(group)}
    return result


def codiesp_x_metrics(gold_whole: Spans, predicted: Spans, tolerance: int = CODIESP_TOLERANCE) -> dict:
    """The official CodiEsp-X matching over unique (note, code) pairs."""
    predicted_pairs = {key for key, spans in predicted.items() if spans}
    tp = 0
    for key, gold_spans in gold_whole.items():
        pred_spans = predicted.get(key, [])
        if any(0 <= gs - ps <= tolerance and 0 <= pe - ge <= tolerance
               for gs, ge in gold_spans for ps, pe in pred_spans):
            tp += 1
    return {**_prf(tp, len(predicted_pairs) - tp, len(gold_whole) - tp),
            "predicted_pairs": len(predicted_pairs), "gold_pairs": len(gold_whole)}
