"""`clem-icd predict`: every input kind, every bad input, every output format, atomic output."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import polars as pl
import pytest
import torch
from model_fixtures import minilm_path, tiny_bert

from clem_icd.inference.inputs import read_notes
from clem_icd.model import ICDCoder

CODES = ["I10", "E11.9", "J18.9", "0DT70ZZ"]
DESCRIPTIONS = ["Essential (primary) hypertension", "Type 2 diabetes mellitus without complications",
                "Pneumonia, unspecified organism", "Resection of Stomach, Open Approach"]
PHI = "Zebulon Quartermaine"  # a planted 'patient name' that must never reach stderr
NOTES = {
    "n1": f"{PHI} admitted with hypertension and type 2 diabetes.",
    "n2": "Pneumonia of the right lower lobe; gastrectomy performed. " * 20,
    "n3": "Follow-up visit, blood pressure controlled.",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    coder = ICDCoder.from_encoder(str(minilm_path()), CODES, encoder_config=tiny_bert(), max_length=128,
                                  descriptions=DESCRIPTIONS, code_systems=["icd10cm"] * 3 + ["icd10pcs"])
    coder.config.threshold = 0.0  # every code is predicted: all formats get CM and PCS codes
    path = tmp_path_factory.mktemp("model") / "coder"
    coder.save_pretrained(path)
    return path


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_every_input_kind_gives_the_same_codes_in_input_order(model_dir, tmp_path, run, cli):
    folder = tmp_path / "notes"
    folder.mkdir()
    for note_id, text in NOTES.items():
        (folder / f"{note_id}.txt").write_text(text)
    (folder / ".hidden").write_text("ignored")
    table = pl.DataFrame({"id": list(NOTES), "text": list(NOTES.values())})
    table.write_csv(tmp_path / "notes.csv")
    table.write_csv(tmp_path / "notes.tsv", separator="\t")
    table.write_parquet(tmp_path / "notes.parquet")
    jsonl = _jsonl(tmp_path / "notes.jsonl", [{"id": k, "text": v} for k, v in NOTES.items()])
    outputs = {}
    for name, args in {"folder": [folder], "files": [folder / "n1.txt", folder / "n2.txt", folder / "n3.txt"],
                       "csv": [tmp_path / "notes.csv"], "tsv": [tmp_path / "notes.tsv"],
                       "parquet": [tmp_path / "notes.parquet"], "jsonl": [jsonl]}.items():
        status, out, err = run("predict", "-m", model_dir, *args, "--top-k", "2")
        assert status == 0, err
        outputs[name] = _records(out)
    reference = outputs["jsonl"]
    assert [r["id"] for r in reference] == list(NOTES)  # input order, although n2 is the longest
    assert all(len(r["codes"]) == 2 and {"code", "system", "description", "probability"} <= set(r["codes"][0])
               for r in reference)
    assert reference[1]["truncated"] is True and reference[0]["truncated"] is False
    for name, records in outputs.items():
        assert [(r["id"], [c["code"] for c in r["codes"]]) for r in records] == \
               [(r["id"], [c["code"] for c in r["codes"]]) for r in reference], name
    # stdin, through a fresh interpreter: JSONL, and a plain note.
    piped = cli("predict", "-m", model_dir, "--top-k", "2", input=jsonl.read_text())
    assert piped.returncode == 0 and _records(piped.stdout) == [
        {**r, "codes": [{**c, "probability": pytest.approx(c["probability"], abs=1e-5)} for c in r["codes"]]}
        for r in reference]
    plain = cli("predict", "-m", model_dir, "-", input=NOTES["n3"])
    assert plain.returncode == 0 and _records(plain.stdout)[0]["id"] == "stdin"
    assert PHI not in piped.stderr + plain.stderr


def test_bad_records_get_errors_and_the_others_are_coded(model_dir, tmp_path, run):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "good.txt").write_text(NOTES["n1"])
    (folder / "empty.txt").write_text("  \n")
    (folder / "latin1.txt").write_bytes(f"{PHI} caf\xe9".encode("latin-1"))
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4\x00\x01\x02" + PHI.encode())
    jsonl = tmp_path / "batch.jsonl"
    jsonl.write_bytes(b"".join([
        json.dumps({"id": "j1", "text": NOTES["n3"]}).encode() + b"\n",
        json.dumps({"text": PHI}).encode() + b"\n",  # no id
        json.dumps({"id": "j3"}).encode() + b"\n",  # no text
        json.dumps({"id": "good", "text": NOTES["n2"]}).encode() + b"\n",  # duplicate of the file's id
        b"{not json " + PHI.encode() + b"\n",
        json.dumps({"id": "j6", "text": 42}).encode() + b"\n",
        b'{"id": "j7", "text": "' + PHI.encode() + b' \xff"}\n',
    ]))
    csv = tmp_path / "rows.csv"
    csv.write_bytes(b"id,text\nc1,fine note about pneumonia\n,no id here\nc3,\"" + PHI.encode() + b" \xe9\"\n")
    status, out, err = run("predict", "-m", model_dir, folder, jsonl, csv, tmp_path / "no-column.csv")
    assert status == 2 and "no-column.csv: no such file or folder" in err  # a missing input stops the run
    (tmp_path / "no-column.csv").write_text("note_id,body\n1,x\n")
    status, out, err = run("predict", "-m", model_dir, folder, jsonl, csv, tmp_path / "no-column.csv")
    assert status == 3
    records = _records(out)
    errors = {(r["id"], r["error"].split(": ", 1)[-1]) for r in records if "error" in r}
    assert {r["id"] for r in records if "codes" in r} == {"good", "j1", "c1"}
    assert errors == {
        ("empty", "empty note"),
        ("latin1", "not valid UTF-8 (byte 24)"),  # len(PHI) + len(" caf")
        ("scan.pdf", "binary data, not a text note"),
        (None, "missing field 'id'"),
        ("j3", "missing field 'text'"),
        ("good", "duplicate id 'good' (an earlier record has it)"),
        (None, "not valid JSON"),
        ("j6", "not a string"),
        (None, "not valid UTF-8 (byte 43)"),
        (None, "missing id"),
        ("c3", "not valid UTF-8"),
        (None, "no column 'id' in the header (the header has 2 column(s))"),
    }
    located = [r["error"] for r in records if "error" in r]
    assert any(e.startswith(f"{jsonl}, line 2") for e in located) and any(e.startswith(f"{csv}, row 2") for e in located)
    assert "12 record(s) could not be coded" in err
    assert PHI not in err and PHI not in " ".join(located)


def test_read_notes_from_stdin_bytes():
    records = list(read_notes(["-"], stdin=io.BytesIO(b"\xef\xbb\xbfPatient note\nsecond line\n")))
    assert [(r.id, r.text, r.error) for r in records] == [("stdin", "Patient note\nsecond line\n", None)]
    records = list(read_notes(["-"], stdin=io.BytesIO(b'\n{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')))
    assert [(r.id, r.error) for r in records] == [("1", None), ("1", "duplicate id '1' (an earlier record has it)")]
    records = list(read_notes(["-"], stdin=io.BytesIO(b"\x00\x01binary")))
    assert records[0].error == "stdin: binary data, not a text note"


def test_fhir_bundle_is_valid_r4(model_dir, tmp_path, run):
    from fhirclient.models import bundle as fhirclient  # R4 models (the dev extra)

    jsonl = _jsonl(tmp_path / "in.jsonl", [{"id": "n1", "text": NOTES["n1"]}, {"id": "", "text": "no id"}])
    status, out, err = run("predict", "-m", model_dir, jsonl, "--format", "fhir", "--explain", "attention",
                           "--evidence-threshold", "0", "--out", tmp_path / "bundle.json")
    assert status == 3 and out == ""
    data = json.loads((tmp_path / "bundle.json").read_text())
    bundle = fhirclient.Bundle(data)  # strict: raises on unknown or missing required elements
    assert bundle.type == "collection"
    resources = [entry.resource for entry in bundle.entry]
    kinds = [r.resource_type for r in resources]
    assert kinds.count("Condition") == 3 and kinds.count("Procedure") == 1 and kinds.count("OperationOutcome") == 1
    systems = {r.resource_type: r.code.coding[0].system for r in resources if r.resource_type != "OperationOutcome"}
    assert systems == {"Condition": "http://hl7.org/fhir/sid/icd-10-cm",
                       "Procedure": "http://www.cms.gov/Medicare/Coding/ICD10"}
    condition = next(r for r in resources if r.resource_type == "Condition")
    assert condition.verificationStatus.coding[0].code == "provisional"
    assert condition.subject.identifier.value == "n1"
    span = {e.url: e for e in condition.evidence[0].extension[0].extension}
    start, end = span["start"].valueInteger, span["end"].valueInteger
    assert NOTES["n1"][start:end] == span["text"].valueString
    assert 0 <= condition.extension[0].valueDecimal <= 1
    assert len({entry.fullUrl for entry in bundle.entry}) == len(bundle.entry)


def test_codiesp_formats(model_dir, tmp_path, run):
    jsonl = _jsonl(tmp_path / "in.jsonl", [{"id": "S0001-1", "text": NOTES["n1"]}, {"id": "S0002-1", "text": NOTES["n3"]}])
    status, out, _ = run("predict", "-m", model_dir, jsonl, "--format", "codiesp", "--top-k", "3")
    lines = [line.split("\t") for line in out.splitlines()]
    assert status == 0 and len(lines) == 6 and all(len(f) == 2 and f[1] == f[1].lower() for f in lines)
    assert [f[0] for f in lines] == ["S0001-1"] * 3 + ["S0002-1"] * 3
    status, out, _ = run("predict", "-m", model_dir, jsonl, "--format", "codiesp-x", "--explain", "attention",
                         "--evidence-threshold", "0", "--max-spans", "2")
    assert status == 0
    for fields in (line.split("\t") for line in out.splitlines()):
        note, position, label, code = fields
        start, end = map(int, position.split())
        assert label == ("PROCEDIMIENTO" if code == "0dt70zz" else "DIAGNOSTICO")
        text = NOTES["n1"] if note == "S0001-1" else NOTES["n3"]
        assert 0 <= start < end <= len(text)
    status, _, err = run("predict", "-m", model_dir, jsonl, "--format", "codiesp-x")
    assert status == 2 and "add --explain" in err


def test_codiesp_format_writes_a_ranking_unless_told_otherwise(model_dir, tmp_path, run):
    """CodiEsp-D/P is scored by MAP over a ranking: --format codiesp defaults to threshold 0 and
    at most CODIESP_TOP_K codes, not the tuned threshold; an explicit --threshold / --top-k still wins and
    the other formats keep the tuned threshold."""
    import shutil

    from clem_icd.cli.predict import CODIESP_TOP_K

    strict = tmp_path / "strict"  # the same model with a tuned threshold that keeps no code
    shutil.copytree(model_dir, strict)
    config = json.loads((strict / "config.json").read_text())
    (strict / "config.json").write_text(json.dumps({**config, "threshold": 0.999}))
    jsonl = _jsonl(tmp_path / "in.jsonl", [{"id": "S0001-1", "text": NOTES["n1"]}, {"id": "S0002-1", "text": NOTES["n3"]}])
    status, out, _ = run("predict", "-m", strict, jsonl, "--threshold", "0")
    assert status == 0
    ranked = {r["id"]: [(c["code"].lower(), c["probability"]) for c in r["codes"]] for r in _records(out)}

    status, out, _ = run("predict", "-m", strict, jsonl, "--format", "codiesp")
    lines = [line.split("\t") for line in out.splitlines()]
    assert status == 0 and len(lines) == 2 * min(CODIESP_TOP_K, len(CODES))
    for note, codes in ranked.items():
        written = [code for note_id, code in lines if note_id == note]
        assert written == [code for code, _ in codes]  # every code, best first
        probabilities = [p for _, p in codes]
        assert probabilities == sorted(probabilities, reverse=True)

    cut = sorted(p for _, p in ranked["S0001-1"])[1]  # keeps the note's 2 best codes
    status, out, _ = run("predict", "-m", strict, jsonl, "--format", "codiesp", "--threshold", str(cut))
    assert status == 0
    assert [code for note_id, code in (line.split("\t") for line in out.splitlines()) if note_id == "S0001-1"] == \
           [code for code, p in ranked["S0001-1"] if p > cut]
    status, out, _ = run("predict", "-m", strict, jsonl, "--format", "codiesp", "--top-k", "1")
    assert status == 0 and [line.split("\t")[1] for line in out.splitlines()] == [ranked[n][0][0] for n in ranked]

    status, out, _ = run("predict", "-m", strict, jsonl)  # jsonl: the tuned threshold, unchanged
    assert status == 0 and [r["codes"] for r in _records(out)] == [[], []]


def test_window_stride_longer_than_the_window_is_one_line_error(model_dir, tmp_path, run):
    jsonl = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": NOTES["n2"]}])
    status, out, err = run("predict", "-m", model_dir, jsonl, "--window-stride", "127")
    assert status == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: --window-stride 127 is larger than this model's window of 126 tokens (max_length 128 "
        "minus 2 special tokens), so the tokens between windows would be skipped: use at most 126"]
    status, out, _ = run("predict", "-m", model_dir, jsonl, "--window-stride", "126")
    assert status == 0 and _records(out)[0]["truncated"] is False


def test_out_file_is_replaced_only_by_a_complete_run(model_dir, tmp_path, run):
    out = tmp_path / "predictions.jsonl"
    out.write_text("previous results\n")
    status, _, err = run("predict", "-m", model_dir, tmp_path / "missing.jsonl", "--out", out)
    assert status == 2 and out.read_text() == "previous results\n"
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.jsonl"]  # no temporary file left
    jsonl = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": NOTES["n3"]}])
    status, _, _ = run("predict", "-m", model_dir, jsonl, "--out", out)
    assert status == 0 and _records(out.read_text())[0]["id"] == "a"


def test_tfidf_models_predict_but_do_not_explain(tmp_path, run):
    from clem_icd.baselines.tfidf import TfidfCoder

    texts = ["hypertension noted", "pneumonia on x-ray", "hypertension and pneumonia", "nothing"] * 3
    labels = [["I10"], ["J18.9"], ["I10", "J18.9"], []] * 3
    TfidfCoder.fit(texts, labels, ["I10", "J18.9"]).save_pretrained(tmp_path / "tfidf")
    jsonl = _jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "known hypertension"}])
    status, out, _ = run("predict", "-m", tmp_path / "tfidf", jsonl, "--threshold", "0", "--top-k", "1")
    assert status == 0 and _records(out)[0]["codes"][0]["code"] == "I10"
    assert _records(out)[0]["codes"][0]["system"] == "icd10cm"
    status, _, err = run("predict", "-m", tmp_path / "tfidf", jsonl, "--explain", "attention")
    assert status == 2 and "TF-IDF" in err


def test_explanations_of_the_trigger_model_through_the_cli(trigger_model, tmp_path, run):
    import numpy as np
    from trigger_fixture import trigger_note

    rng = np.random.default_rng(5)
    notes = [trigger_note(rng) for _ in range(6)]
    jsonl = _jsonl(tmp_path / "in.jsonl", [{"id": f"t{i}", "text": text} for i, (_, text, _) in enumerate(notes)])
    status, out, _ = run("predict", "-m", trigger_model, jsonl, "--explain", "attingrad")
    assert status == 0
    hits = []
    for record, (_, text, spans) in zip(_records(out), notes):
        planted = {code: (s, e) for s, e, code in spans}
        for code in record["codes"]:
            for span in code["evidence"]:
                assert text[span["start"]:span["end"]] == span["text"]
            if code["code"] in planted and code["evidence"]:
                start, end = planted[code["code"]]
                hits.append(code["evidence"][0]["start"] < end and start < code["evidence"][0]["end"])
    assert len(hits) >= 6 and np.mean(hits) >= 0.8


# ---------------------------------------------------------------- `python -m clem_icd.cli`


def _module_cli(*args: str, launcher: tuple[str, ...] = (sys.executable,), cwd=None):
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*launcher, "-m", "clem_icd.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


@pytest.mark.slow
def test_the_cli_runs_as_a_module_as_the_multi_gpu_launch_documents(tmp_path):
    """docs/model.md and README: `accelerate launch -m clem_icd.cli train ...` runs the package
    as a module, which needs clem_icd/cli/__main__.py."""
    result = _module_cli("train", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "python -m clem_icd.cli train [OPTIONS]" in result.stdout
    assert "accelerate launch -m clem_icd.cli train" in result.stdout  # the train help itself
    result = _module_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().startswith("clem-icd ")
    # The documented launcher itself (one CPU process: no GPU or accelerate config needed).
    pytest.importorskip("accelerate")
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    result = _module_cli("--version", launcher=launcher, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("clem-icd ")
