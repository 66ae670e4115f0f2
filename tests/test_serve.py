"""`clem-icd serve`: every status code, tokens, limits, readiness and draining, cross-request
batching against coding each note alone, and logs without note text or ids."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from model_fixtures import minilm_path, tiny_modernbert
from service_harness import (
    ThreadedService,
    slow_loader,
    start_cli_service,
    wait_ready,
)
from trigger_fixture import trigger_note

from clem_icd.inference import fhir
from clem_icd.inference.inputs import NoteRecord
from clem_icd.inference.predictor import NotePredictor, PredictOptions
from clem_icd.inference.run import code_records
from clem_icd.loading import load_model
from clem_icd.model import ICDCoder
from clem_icd.serve.code_search import CodeIndex
from clem_icd.serve.settings import ServeSettings, is_loopback
from clem_icd.version import __version__

TOKEN = "s3cret-token-0123456789abcdef"
MARKER = "Zebulon-Quartermaine-7731"  # a planted patient name / note id that no log line may hold


def notes(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"note-{i}", "text": trigger_note(rng)[1]} for i in range(n)]


def settings(model, **overrides) -> ServeSettings:
    return ServeSettings(model=model, max_wait_ms=overrides.pop("max_wait_ms", 20), **overrides)


@pytest.fixture(scope="module")
def modernbert_dir(tmp_path_factory):
    """A tiny ModernBERT coder (the packed attention path), every code reported (threshold 0)."""
    torch.manual_seed(0)
    coder = ICDCoder.from_encoder(str(minilm_path()), ["I10", "E11.9", "J18.9", "0DT70ZZ"],
                                  encoder_config=tiny_modernbert(), max_length=1024, chunk_size=1024,
                                  code_systems=["icd10cm"] * 3 + ["icd10pcs"],
                                  descriptions=["Essential (primary) hypertension", "Type 2 diabetes mellitus",
                                                "Pneumonia, unspecified organism", "Resection of Stomach"])
    coder.config.threshold = 0.0
    path = tmp_path_factory.mktemp("modernbert") / "coder"
    coder.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def service(trigger_model):
    with ThreadedService(settings(trigger_model, token=TOKEN)) as url:
        yield url


def post(url: str, body: dict, token: str | None = TOKEN, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/v1/code", json=body, headers=headers, timeout=60, **kwargs)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# ------------------------------------------------------------------------- the answers

def test_results_are_what_predict_writes(service, trigger_model):
    batch = notes(5) + [{"id": "empty", "text": "  \n"}, {"id": "note-0", "text": "duplicate id"}]
    response = post(service, {"notes": batch, "explain": "attention"})
    assert response.status_code == 200
    answer = response.json()
    model = load_model(trigger_model)
    assert answer["model"] == {"name": "model", "codes": 8, "threshold": model.threshold,
                               "score_kind": "probability", "explain": "attention", "version": __version__}
    predictor = model.note_predictor(PredictOptions(explain="attention"))
    expected = list(code_records(predictor, [NoteRecord(n["id"], n["text"]) for n in batch[:5]]))
    _same(answer["results"][:5], expected)
    assert answer["results"][5] == {"id": "empty", "error": "notes.5: empty note"}
    assert answer["results"][6] == {"id": "note-0", "error": "notes.6: duplicate id (an earlier note has it)"}
    assert any(code["evidence"] for result in answer["results"][:5] for code in result["codes"])
    for result, note in zip(answer["results"][:5], batch):
        for code in result["codes"]:
            for span in code["evidence"]:
                assert note["text"][span["start"]:span["end"]] == span["text"]


def _same(got: list[dict], expected: list[dict]) -> None:
    """Equal records, probabilities and scores to float32 rounding."""
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    for a, b in zip(got, expected):
        assert a["truncated"] == b["truncated"]
        assert [c["code"] for c in a["codes"]] == [c["code"] for c in b["codes"]]
        for x, y in zip(a["codes"], b["codes"]):
            assert x["probability"] == pytest.approx(y["probability"], abs=1e-6)
            assert [(s["start"], s["end"], s["text"]) for s in x.get("evidence", [])] == \
                   [(s["start"], s["end"], s["text"]) for s in y.get("evidence", [])]


def test_fhir_format_is_the_bundle_predict_writes(service):
    batch = notes(3) + [{"id": "blank", "text": ""}]
    bundle = post(service, {"notes": batch, "format": "fhir", "explain": "attention"}).json()
    records = post(service, {"notes": batch, "explain": "attention"}).json()["results"]
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert bundle["entry"] == [entry for record in records for entry in fhir.bundle_entries(record)]
    kinds = {entry["resource"]["resourceType"] for entry in bundle["entry"]}
    assert kinds == {"Condition", "OperationOutcome"}


def test_top_k_and_threshold_choose_codes(service):
    note = notes(1)
    everything = post(service, {"notes": note, "threshold": 0.0}).json()["results"][0]["codes"]
    assert len(everything) == 8
    assert [c["code"] for c in post(service, {"notes": note, "threshold": 0.0, "top_k": 2}).json()
            ["results"][0]["codes"]] == [c["code"] for c in everything[:2]]


def test_model_card_and_code_search(service):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    card = httpx.get(f"{service}/v1/model", headers=headers).json()
    assert (card["codes"], card["max_length"], card["head"]) == (8, 512, "laat")
    assert card["max_chars"] == 100_000 and card["max_notes"] == 64
    found = httpx.get(f"{service}/v1/codes", params={"q": "e119"}, headers=headers).json()["codes"]
    assert found[0]["code"] == "E11.9"
    assert httpx.get(f"{service}/v1/codes", params={"q": "x", "limit": 0}, headers=headers).status_code == 422


def test_code_search_ranks_code_then_prefix_then_words():
    index = CodeIndex(["J18.9", "J18", "I10", "E11.9"], ["icd10cm"] * 4,
                      ["Pneumonia, unspecified organism", "Pneumonia, organism unspecified",
                       "Essential (primary) hypertension", "Type 2 diabetes mellitus without complications"])
    assert [c["code"] for c in index.search("J18", 10)] == ["J18", "J18.9"]
    assert [c["code"] for c in index.search("j189", 10)] == ["J18.9"]
    assert [c["code"] for c in index.search("pneu unspec", 10)] == ["J18.9", "J18"]
    assert [c["code"] for c in index.search("diab type", 1)] == ["E11.9"]
    assert index.search("  ", 10) == [] and index.search("asthma", 10) == []


def test_a_tfidf_model_is_served_without_evidence(tmp_path):
    from clem_icd.baselines.tfidf import TfidfCoder

    texts = ["hypertension noted", "pneumonia on x-ray", "hypertension and pneumonia", "nothing"] * 3
    labels = [["I10"], ["J18.9"], ["I10", "J18.9"], []] * 3
    TfidfCoder.fit(texts, labels, ["I10", "J18.9"]).save_pretrained(tmp_path / "tfidf")
    with ThreadedService(settings(tmp_path / "tfidf")) as url:
        note = [{"id": "a", "text": "known hypertension"}]
        result = post(url, {"notes": note, "threshold": 0.0, "top_k": 1}, token=None).json()["results"][0]
        assert result["codes"][0]["code"] == "I10" and result["truncated"] is False
        refused = post(url, {"notes": note, "explain": "attention"}, token=None)
        assert refused.status_code == 422 and "TF-IDF" in refused.json()["detail"]
        assert httpx.get(f"{url}/v1/model").json()["explain_methods"] == []


# ------------------------------------------------------------------------- tokens and limits

def test_token_is_required_on_the_api_only(service):
    for token in (None, "wrong-token-0123456789", TOKEN[:-1]):
        response = post(service, {"notes": notes(1)}, token=token)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.get(f"{service}/v1/model").status_code == 401
    assert httpx.get(f"{service}/v1/model", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert post(service, {"notes": notes(1)}).status_code == 200
    assert httpx.get(f"{service}/health/live").status_code == 200  # probes carry no token
    assert httpx.get(f"{service}/health/ready").status_code == 200


def test_limits_answer_413(trigger_model):
    limits = settings(trigger_model, max_chars=200, max_notes=2, max_body_bytes=2_000)
    with ThreadedService(limits) as url:
        too_long = post(url, {"notes": [{"id": "a", "text": "x" * 201}]}, token=None)
        assert too_long.status_code == 413 and "notes.0.text: 201 characters" in too_long.json()["detail"]
        too_many = post(url, {"notes": [{"id": str(i), "text": "fever"} for i in range(3)]}, token=None)
        assert too_many.status_code == 413 and "--max-notes" in too_many.json()["detail"]
        body = json.dumps({"notes": [{"id": "a", "text": "y" * 3_000}]}).encode()
        assert httpx.post(f"{url}/v1/code", content=body).status_code == 413  # Content-Length
        chunks = (body[i:i + 500] for i in range(0, len(body), 500))  # no Content-Length: chunked
        response = httpx.post(f"{url}/v1/code", content=chunks, headers={"Content-Type": "application/json"})
        assert response.status_code == 413
        assert post(url, {"notes": [{"id": "a", "text": "fever " * 30}]}, token=None).status_code == 200


def test_malformed_bodies_answer_422_naming_the_field_without_echoing_it(service):
    cases = {
        '{"notes": [{"id": "a"}]}': "body.notes.0.text",
        '{"notes": [{"id": "", "text": "%s"}]}' % MARKER: "body.notes.0.id",
        '{"notes": [{"id": "a", "text": 5}]}': "body.notes.0.text",
        '{"notes": [{"id": "a", "text": "t", "mrn": "%s"}]}' % MARKER: "body.notes.0.mrn",
        '{"notes": [], "explain": "%s"}' % MARKER: "body.explain",
        '{"notes": [], "top_k": 0}': "body.top_k",
        '{"notes": [], "format": "xml"}': "body.format",
        '{"notes": [{"id": "a", "text": "%s"' % MARKER: "body",  # not JSON
    }
    for body, field in cases.items():
        response = httpx.post(f"{service}/v1/code", content=body.encode(),
                              headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        assert response.status_code == 422, body
        assert response.json()["detail"].startswith(field), (body, response.json())
        assert MARKER not in response.text


def test_requests_time_out_with_504(trigger_model):
    with ThreadedService(settings(trigger_model, timeout_s=0.3), load=slow_loader(1.0)) as url:
        response = post(url, {"notes": notes(1)}, token=None)
        assert response.status_code == 504 and "--timeout" in response.json()["detail"]
        assert metric(url, 'clem_icd_requests_refused_total{reason="timeout"}') == 1


def test_full_queue_answers_503_with_retry_after(trigger_model):
    with ThreadedService(settings(trigger_model, queue_size=2, max_batch_notes=1), load=slow_loader(0.6)) as url:
        with httpx.Client(timeout=30) as client:
            def send(results, index):
                results[index] = client.post(f"{url}/v1/code", json={"notes": notes(1, seed=index)})

            results: dict = {}
            threads = [threading.Thread(target=send, args=(results, i)) for i in range(3)]
            for thread in threads:  # one runs, two wait: the queue is full
                thread.start()
                time.sleep(0.15)
            refused = client.post(f"{url}/v1/code", json={"notes": notes(1, seed=9)})
            for thread in threads:
                thread.join()
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert "--queue-size" in refused.json()["detail"]
        assert [results[i].status_code for i in range(3)] == [200, 200, 200]


def test_a_request_whose_client_has_gone_is_dropped(trigger_model):
    with ThreadedService(settings(trigger_model, max_batch_notes=1), load=slow_loader(1.0)) as url:
        first = threading.Thread(target=post, args=(url, {"notes": notes(1)}), kwargs={"token": None})
        first.start()
        time.sleep(0.2)  # the first request is being coded; the next one waits, then its client goes
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/code", json={"notes": notes(2, seed=1)}, timeout=0.3)
        first.join()
        time.sleep(0.5)
        assert metric(url, 'clem_icd_requests_refused_total{reason="client_gone"}') == 1
        assert metric(url, "clem_icd_notes_coded_total") == 1  # the abandoned request's notes never ran


# ------------------------------------------------------------------------- batching

async def _concurrently(url: str, bodies: list[dict]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        return await asyncio.gather(*(client.post(f"{url}/v1/code", json=body) for body in bodies))


@pytest.mark.parametrize("explain", [None, "attention"])
def test_64_concurrent_notes_are_batched_and_coded_as_alone(modernbert_dir, explain):
    rng = np.random.default_rng(1)
    words = ["hypertension", "diabetes", "pneumonia", "gastrectomy", "stable", "discharged", "fever", "🩺"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(5, 300)))) for _ in range(64)]
    predictor = NotePredictor(load_model(modernbert_dir), PredictOptions(explain=explain))
    alone = [predictor.predict([text])[0] for text in texts]
    with ThreadedService(settings(modernbert_dir, max_wait_ms=50, max_batch_tokens=16_384)) as url:
        responses = asyncio.run(_concurrently(url, [{"notes": [{"id": f"n{i}", "text": t}], "explain": explain}
                                                    for i, t in enumerate(texts)]))
        passes = metric(url, "clem_icd_batch_notes_count")
        coded = metric(url, "clem_icd_notes_coded_total")
    assert all(r.status_code == 200 for r in responses)
    got = [r.json()["results"][0] for r in responses]
    _same(got, [{"id": f"n{i}", **result} for i, result in enumerate(alone)])
    assert coded == 64
    assert passes < 64 / 4, f"{passes} passes for 64 concurrent notes: not batched"


def test_batching_off_codes_each_request_alone(trigger_model):
    with ThreadedService(settings(trigger_model, batching=False)) as url:
        responses = asyncio.run(_concurrently(url, [{"notes": [n]} for n in notes(6)]))
        assert all(r.status_code == 200 for r in responses)
        assert metric(url, "clem_icd_batch_notes_count") == 6


# ------------------------------------------------------------------------- readiness

def test_not_ready_until_loaded_and_warm(trigger_model):
    gate = threading.Event()
    with ThreadedService(settings(trigger_model), load=slow_loader(0.0, gate), wait_ready=False) as url:
        assert httpx.get(f"{url}/health/live").status_code == 200
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 503 and ready.json() == {"status": "loading"} and ready.headers["Retry-After"]
        refused = post(url, {"notes": notes(1)}, token=None)
        assert refused.status_code == 503 and "loading" in refused.json()["detail"]
        assert metric(url, "clem_icd_ready") == 0
        gate.set()
        wait_ready(url)
        assert post(url, {"notes": notes(1)}, token=None).status_code == 200
        assert metric(url, "clem_icd_ready") == 1


def test_a_model_that_fails_to_load_is_never_ready(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "clem_icd"}')
    with ThreadedService(settings(tmp_path), wait_ready=False) as url:
        for _ in range(100):
            ready = httpx.get(f"{url}/health/ready")
            if ready.json()["status"] == "failed":
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json() == {"status": "failed"}
        assert "model.safetensors: not found" in post(url, {"notes": notes(1)}, token=None).json()["detail"]


# ------------------------------------------------------------------------- the command

def test_sigterm_drains_and_no_log_line_holds_note_text_or_id(trigger_model, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    log = tmp_path / "serve.log"
    process, url = start_cli_service(trigger_model, log, "--token-file", str(token_file), "--log-level", "debug",
                                     "--drain-seconds", "2", "--max-chars", "5000")
    try:
        wait_ready(url, process, log)
        text = f"Patient {MARKER} admitted. " + notes(1)[0]["text"]
        for body in ({"notes": [{"id": MARKER, "text": text}], "explain": "attention"},
                     {"notes": [{"id": MARKER, "text": text}], "format": "fhir"},
                     {"notes": [{"id": MARKER, "text": text}, {"id": MARKER, "text": " "}]},
                     {"notes": [{"id": MARKER, "text": text * 200}]},  # 413
                     {"notes": [{"id": MARKER}], "note": text}):  # 422
            post(url, body)
        post(url, {"notes": [{"id": MARKER, "text": text}]}, token=MARKER)  # 401
        httpx.get(f"{url}/v1/codes", params={"q": MARKER}, headers={"Authorization": f"Bearer {TOKEN}"})
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        draining = httpx.get(f"{url}/health/ready")
        assert draining.status_code == 503 and draining.json() == {"status": "draining"}
        assert post(url, {"notes": notes(1)}).status_code == 200  # still coding what arrives while draining
        # uvicorn shuts down gracefully, then re-raises the signal: killed by SIGTERM, as asked
        assert process.wait(timeout=30) == -signal.SIGTERM
    finally:
        process.kill()
    logs = log.read_text()
    assert "DEBUG" in logs and "access:" in logs and "coded 1 note(s)" in logs and "SIGTERM: not ready" in logs
    assert "Application shutdown complete" in logs
    assert MARKER not in logs
    assert "Patient" not in logs


def test_refuses_to_listen_beyond_loopback_without_a_token(trigger_model, tmp_path):
    def serve(*args):
        return subprocess.run([sys.executable, "-m", "clem_icd.cli", "serve", "--model", str(trigger_model),
                               *args], capture_output=True, text=True, timeout=60)

    refused = serve("--host", "0.0.0.0")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 is reachable from other machines: give --token-file (a file holding the bearer "
        "token clients must send), or serve on 127.0.0.1"]
    (tmp_path / "short").write_text("abc")
    weak = serve("--host", "0.0.0.0", "--token-file", str(tmp_path / "short"))
    assert weak.returncode == 2 and "at least 16 characters" in weak.stderr
    assert serve("--model", str(tmp_path)).stderr.startswith("error: ")
    assert all(is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.8.0.1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.1.2.3", "example.org", "::"))


def test_api_docs_and_page_load_nothing_from_elsewhere(service):
    docs = httpx.get(f"{service}/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert httpx.get(f"{service}/docs-assets/swagger-ui-bundle.js").status_code == 200
    page = httpx.get(f"{service}/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)
    assert "access-control-allow-origin" not in httpx.options(
        f"{service}/v1/code", headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
    ).headers
