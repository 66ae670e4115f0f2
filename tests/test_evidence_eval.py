"""`clem-icd evaluate-evidence`: CodiEsp-X and MDACE loaders, word-level metrics and the CodiEsp-X
official matching, against values computed by hand."""

from __future__ import annotations

import json

import pytest

from clem_icd.errors import ClemError
from clem_icd.evaluation.evidence_metrics import (
    codiesp_x_metrics,
    read_codiesp_x,
    read_mdace,
    read_prediction_jsonl,
    token_metrics,
)

#        0         1         2         3         4         5
#        0123456789012345678901234567890123456789012345678901234
DOC_A = "Dolor abdominal agudo y fiebre alta. Infeccion urinaria."
DOC_B = "Hipertension arterial esencial."
# words of A: Dolor(0,5) abdominal(6,15) agudo(16,21) y(22,23) fiebre(24,30) alta(31,35)
#             Infeccion(37,46) urinaria(47,55)
# words of B: Hipertension(0,12) arterial(13,21) esencial(22,30)

GOLD_X = (
    "A\tDIAGNOSTICO\tr10.0\tdolor abdominal agudo\t0 21\n"
    "A\tDIAGNOSTICO\tr50.9\tfiebre\t24 30\n"
    "A\tDIAGNOSTICO\tn39.0\tinfeccion ... urinaria\t37 46;47 55\n"
    "B\tDIAGNOSTICO\ti10\thipertension esencial\t0 12;22 30\n"
)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "A.txt").write_text(DOC_A)
    (tmp_path / "texts" / "B.txt").write_text(DOC_B)
    (tmp_path / "goldX.tsv").write_text(GOLD_X)
    predictions = [
        {"id": "A", "codes": [
            # R10.0: 'abdominal agudo y' -> words {abdominal, agudo, y}; gold {Dolor, abdominal, agudo}
            {"code": "R10.0", "evidence": [{"start": 6, "end": 23, "score": 0.7, "text": "abdominal agudo y"}]},
            # R50.9: 'fiebre' exactly
            {"code": "R50.9", "evidence": [{"start": 24, "end": 30, "score": 0.9, "text": "fiebre"}]},
            # J18.9: not gold -> ignored by the word metrics, a false positive pair for CodiEsp-X
            {"code": "J18.9", "evidence": [{"start": 31, "end": 35, "score": 0.5, "text": "alta"}]},
        ]},
        # N39.0 and I10 not explained: their gold words are all missed in 'all'
        {"id": "B", "codes": [{"code": "I10", "evidence": []}]},
        {"id": "C", "error": "empty note"},
    ]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return tmp_path


def test_codiesp_x_reader_keeps_fragments_and_whole_spans(files):
    fragments, whole = read_codiesp_x(files / "goldX.tsv")
    assert fragments[("A", "N390")] == [(37, 46), (47, 55)]
    assert whole[("A", "N390")] == [(37, 55)]
    assert whole[("B", "I10")] == [(0, 30)]
    assert len(fragments) == 4


def test_word_metrics_by_hand(files):
    gold, _ = read_codiesp_x(files / "goldX.tsv")
    predicted = read_prediction_jsonl(files / "pred.jsonl")
    metrics = token_metrics(gold, predicted, {"A": DOC_A, "B": DOC_B})
    # Rows: A/R100 gold 3 words, pred 3, overlap 2 -> tp 2, fp 1, fn 1, IoU 2/4
    #       A/R509 gold 1, pred 1 -> tp 1, IoU 1
    #       A/N390 gold 2 (Infeccion, urinaria), pred 0 -> fn 2, IoU 0
    #       B/I10  gold 2 (fragments skip 'arterial'), pred 0 -> fn 2, IoU 0
    tp, fp, fn = 3, 1, 5
    assert metrics["all"]["precision"] == pytest.approx(tp / (tp + fp))
    assert metrics["all"]["recall"] == pytest.approx(tp / (tp + fn))
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert metrics["all"]["f1"] == pytest.approx(2 * p * r / (p + r))
    assert metrics["all"]["iou"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert metrics["all"]["rows"] == 4
    # Explained rows only: R100 and R509 -> tp 3, fp 1, fn 1
    assert metrics["explained"]["rows"] == 2
    assert metrics["explained"]["recall"] == pytest.approx(3 / 4)
    assert metrics["explained"]["iou"] == pytest.approx((0.5 + 1) / 2)
    with pytest.raises(ClemError, match="no text for 1 note"):
        token_metrics(gold, predicted, {"A": DOC_A})


def test_codiesp_x_official_matching_with_tolerance(files):
    _, whole = read_codiesp_x(files / "goldX.tsv")
    # R10.0: predicted (6, 23) does not contain gold (0, 21) -> miss; R50.9 exact -> hit;
    # J18.9 -> false positive pair; I10 explained with no span -> not a predicted pair.
    metrics = codiesp_x_metrics(whole, read_prediction_jsonl(files / "pred.jsonl"))
    assert (metrics["predicted_pairs"], metrics["gold_pairs"]) == (3, 4)
    assert metrics["precision"] == pytest.approx(1 / 3) and metrics["recall"] == pytest.approx(1 / 4)
    gold = {("A", "R100"): [(20, 30)]}
    assert codiesp_x_metrics(gold, {("A", "R100"): [(10, 40)]})["recall"] == 1.0  # overhang 10 and 10
    assert codiesp_x_metrics(gold, {("A", "R100"): [(9, 30)]})["recall"] == 0.0  # starts 11 early
    assert codiesp_x_metrics(gold, {("A", "R100"): [(21, 30)]})["recall"] == 0.0  # cuts the gold span
    assert codiesp_x_metrics(gold, {("A", "R100"): [(0, 5), (20, 31)]})["recall"] == 1.0  # any span may hit


def test_mdace_reader(tmp_path):
    admission = {"hadm_id": 1, "comment": "", "notes": [
        {"note_id": 11, "category": "Discharge summary", "description": "Report", "annotations": [
            {"begin": 0, "end": 12, "code": "I10", "code_system": "ICD-10-CM", "description": "", "type": "Human"},
            {"begin": 13, "end": 21, "code": "5A1935Z", "code_system": "ICD-10-PCS", "description": "", "type": "Human"},
            {"begin": 13, "end": 21, "code": "401.9", "code_system": "ICD-9-CM", "description": "", "type": "Human"},
        ]},
        {"note_id": 12, "category": "Radiology", "annotations": [
            {"begin": 0, "end": 3, "code": "J18.9", "code_system": "ICD-10-CM"}]},
    ]}
    (tmp_path / "1-ICD-10.json").write_text(json.dumps(admission))
    assert read_mdace(tmp_path, code_systems=("ICD-10-CM", "ICD-10-PCS")) == {
        ("11", "I10"): [(0, 12)], ("11", "5A1935Z"): [(13, 21)]}
    assert len(read_mdace(tmp_path)) == 3
    assert ("12", "J189") in read_mdace(tmp_path, category=None)
    assert read_mdace(tmp_path, code_systems=("ICD-9-CM",)) == {("11", "4019"): [(13, 21)]}
    (tmp_path / "2-ICD-10.json").write_text("{}")
    with pytest.raises(ClemError, match="2-ICD-10.json: not an MDACE annotation file"):
        read_mdace(tmp_path)


def test_cli_writes_metrics(files, run):
    status, out, err = run("evaluate-evidence", "--gold", files / "goldX.tsv", "--pred", files / "pred.jsonl",
                           "--texts", files / "texts", "--out", files / "metrics.json")
    assert status == 0, err
    metrics = json.loads((files / "metrics.json").read_text())
    assert metrics["layout"] == "codiesp-x" and metrics["tokens"]["all"]["rows"] == 4
    assert metrics["codiesp_x"]["recall"] == pytest.approx(0.25)
    assert "CodiEsp-X official" in out
    (files / "bad.tsv").write_text("A\tr10.0\n")
    status, _, err = run("evaluate-evidence", "--gold", files / "bad.tsv", "--pred", files / "pred.jsonl",
                         "--texts", files / "texts")
    assert status == 2 and "bad.tsv, line 1: 2 columns" in err


@pytest.mark.shared_data
def test_real_codiesp_x_files_load_and_fit_their_texts(codiesp_dir):
    from clem_icd.inference.inputs import read_notes

    fragments, whole = read_codiesp_x(codiesp_dir / "dev" / "devX.tsv")
    texts = {r.id: r.text for r in read_notes([str(codiesp_dir / "dev" / "text_files")])}
    assert len(texts) == 250 and len({note for note, _ in fragments}) == 250
    assert sum(len(v) for v in whole.values()) == 4477  # one whole span per line of devX.tsv
    for (note, _), spans in fragments.items():
        assert all(0 <= s < e <= len(texts[note]) for s, e in spans)


def test_mdace_notes_are_extracted_from_noteevents(tmp_path, run):
    import gzip

    admission = {"hadm_id": 1, "notes": [{"note_id": 7, "category": "Discharge summary", "annotations": [
        {"begin": 0, "end": 4, "code": "I10", "code_system": "ICD-10-CM"}]}]}
    (tmp_path / "mdace").mkdir()
    (tmp_path / "mdace" / "1-ICD-10.json").write_text(json.dumps(admission))
    rows = 'ROW_ID,SUBJECT_ID,TEXT\n6,1,"other note"\n7,1,"HTN, on lisinopril.\nStable."\n'
    with gzip.open(tmp_path / "NOTEEVENTS.csv.gz", "wt") as handle:
        handle.write(rows)
    status, _, err = run("prepare", "mdace-notes", "--mdace", tmp_path / "mdace", "--noteevents",
                         tmp_path / "NOTEEVENTS.csv.gz", "--out", tmp_path / "notes.jsonl")
    assert status in (0, None), err
    lines = (tmp_path / "notes.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"id": "7", "text": "HTN, on lisinopril.\nStable."}]
    admission["notes"][0]["note_id"] = 8
    (tmp_path / "mdace" / "1-ICD-10.json").write_text(json.dumps(admission))
    status, _, err = run("prepare", "mdace-notes", "--mdace", tmp_path / "mdace", "--noteevents",
                         tmp_path / "NOTEEVENTS.csv.gz", "--out", tmp_path / "notes2.jsonl")
    assert status == 2 and "1 of the 1 MDACE notes are not there (ROW_ID 8)" in err
    assert not (tmp_path / "notes2.jsonl").exists()
