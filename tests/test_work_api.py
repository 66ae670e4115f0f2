"""The workbench API (/v1/work) against a served model (the trigger coder) and a real database
(SQLite and PostgreSQL, the `work_db` fixture): notes enqueued are pre-coded in the background
exactly as /v1/code codes them, once; a save needs the ETag as read (428 without, 412 when
stale), so a second coder never overwrites the first; roles are enforced (403) and tokens are
users' (401); the export streams the final codes; no note text reaches a log."""

from __future__ import annotations

import logging
import time

import httpx
import numpy as np
import pytest
from service_harness import ThreadedService
from trigger_fixture import trigger_note

from clem_icd.serve.settings import ServeSettings
from clem_icd.workbench.users import add_user

MARKER = "Zebulon-Quartermaine"  # a made-up name planted in every note: never in a log


def notes(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": f"note-{i}", "text": f"{MARKER}. {trigger_note(rng)[1]}", "meta": {"encounter_date": "2026-11-30"}}
            for i in range(n)]


def wait_for(predicate, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("not within the time")


@pytest.fixture
def service(trigger_model, work_db, caplog):
    caplog.set_level(logging.DEBUG)
    tokens = {name: add_user(work_db, name, role) for name, role in
              [("ann", "coder"), ("bob", "coder"), ("audrey", "auditor"), ("root", "admin")]}
    settings = ServeSettings(model=trigger_model, max_wait_ms=5,
                             db=work_db.url.render_as_string(hide_password=False))
    with ThreadedService(settings) as url:
        clients = {name: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
                   for name, token in tokens.items()}
        yield url, clients
        for client in clients.values():
            client.close()
    assert MARKER not in caplog.text


def test_enqueued_notes_are_pre_coded_once_as_v1_code_codes_them(service):
    url, users = service
    ann = users["ann"]
    batch = notes(6)
    answer = ann.post("/v1/work/notes", json={"notes": batch})
    assert answer.status_code == 200 and answer.json() == {"added": [n["id"] for n in batch], "existing": []}
    assert ann.post("/v1/work/notes", json={"notes": batch[:2]}).json() == {"added": [], "existing": ["note-0", "note-1"]}
    wait_for(lambda: not ann.get("/v1/work/notes", params={"status": "queued"}).json()["notes"])
    # The independent computation: the stateless route on the same texts, with attention evidence.
    direct = httpx.post(f"{url}/v1/code", json={"notes": [{"id": n["id"], "text": n["text"]} for n in batch],
                                                "explain": "attention"}, timeout=60).json()["results"]
    for note, expected in zip(batch, direct):
        got = ann.get(f"/v1/work/notes/{note['id']}").json()
        assert got["status"] == "pre-coded" and got["text"] == note["text"] and got["meta"] == note["meta"]
        assert [s["code"] for s in got["suggestions"]] == [c["code"] for c in expected["codes"]]
        for suggestion, code in zip(got["suggestions"], expected["codes"]):
            assert suggestion["score"] == pytest.approx(code["score"], abs=1e-6)
            assert [(e["start"], e["end"], e["text"]) for e in suggestion["evidence"]] == \
                   [(e["start"], e["end"], e["text"]) for e in code["evidence"]]
        history = ann.get(f"/v1/work/notes/{note['id']}/history").json()["history"]
        assert [line["action"] for line in history] == ["enqueued", "pre-coded"]  # coded once
    conflict = ann.post("/v1/work/notes", json={"notes": [{"id": "note-0", "text": f"{MARKER} changed"}]})
    assert conflict.status_code == 409 and "another text" in conflict.json()["detail"]
    assert MARKER not in conflict.json()["detail"]


def precoded_note(client) -> tuple[str, str, list[str]]:
    client.post("/v1/work/notes", json={"notes": notes(1, seed=3)})
    note = wait_for(lambda: (n := client.get("/v1/work/notes/note-0")).json()["status"] == "pre-coded" and n)
    return "note-0", note.headers["ETag"], [s["code"] for s in note.json()["suggestions"]]


def test_a_second_coder_never_overwrites_the_first_unseen(service):
    _, users = service
    ann, bob = users["ann"], users["bob"]
    note_id, tag, codes = precoded_note(ann)
    assert codes, "the trigger coder suggests the planted codes"
    decision = {"accepted": codes[:1], "rejected": codes[1:], "principal_code": codes[0]}
    missing = ann.put(f"/v1/work/notes/{note_id}/decision", json=decision)
    assert missing.status_code == 428 and "If-Match" in missing.json()["detail"]
    saved = ann.put(f"/v1/work/notes/{note_id}/decision", json=decision, headers={"If-Match": tag})
    assert saved.status_code == 200 and saved.headers["ETag"] != tag
    assert saved.json()["status"] == "in review"
    stale = bob.put(f"/v1/work/notes/{note_id}/decision", json={"rejected": codes}, headers={"If-Match": tag})
    assert stale.status_code == 412 and "reload" in stale.json()["detail"]
    fresh = bob.get(f"/v1/work/notes/{note_id}")
    claimed = bob.put(f"/v1/work/notes/{note_id}/decision", json={"rejected": codes},
                      headers={"If-Match": fresh.headers["ETag"]})
    assert claimed.status_code == 409 and "in review by ann" in claimed.json()["detail"]
    assert fresh.json()["decision"]["by"] == "ann" and fresh.json()["decision"]["accepted"] == codes[:1]
    bad = ann.put(f"/v1/work/notes/{note_id}/decision", json={"accepted": ["Z99.9"]},
                  headers={"If-Match": saved.headers["ETag"]})
    assert bad.status_code == 422 and "not among the note's suggestions" in bad.json()["detail"]


def test_submit_audit_export_and_roles(service):
    url, users = service
    ann, audrey, root = users["ann"], users["audrey"], users["root"]
    note_id, tag, codes = precoded_note(ann)
    assert ann.post(f"/v1/work/notes/{note_id}/claim").status_code == 200
    tag = ann.get(f"/v1/work/notes/{note_id}").headers["ETag"]
    tag = ann.put(f"/v1/work/notes/{note_id}/decision", headers={"If-Match": tag},
                  json={"accepted": codes, "added": [{"code": "Z99.89"}]}).headers["ETag"]
    assert audrey.post(f"/v1/work/notes/{note_id}/claim").status_code == 403
    tag = ann.post(f"/v1/work/notes/{note_id}/submit", headers={"If-Match": tag}).headers["ETag"]
    forbidden = ann.post(f"/v1/work/notes/{note_id}/audit", json={"outcome": "approved"}, headers={"If-Match": tag})
    assert forbidden.status_code == 403 and forbidden.json()["detail"] == "a coder may not audit a note"
    audited = audrey.post(f"/v1/work/notes/{note_id}/audit", json={"outcome": "approved"}, headers={"If-Match": tag})
    assert audited.status_code == 200 and audited.json()["status"] == "audited"
    assert ann.get("/v1/work/export").status_code == 403
    export = audrey.get("/v1/work/export", params={"format": "jsonl"})
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
    [record] = [line for line in export.text.splitlines() if line]
    assert MARKER not in record and '"audited_by": "audrey"' in record and '"Z99.89"' in record
    fhir = audrey.get("/v1/work/export", params={"format": "fhir"}).json()
    assert {e["resource"]["code"]["coding"][0]["code"] for e in fhir["entry"]} == {*codes, "Z99.89"}
    stats = ann.get("/v1/work/stats").json()
    assert stats["models"][0]["accepted"] == len(codes) and stats["models"][0]["added"] == 1
    # Users: admins only; a disabled user's token is refused.
    assert ann.get("/v1/work/users").status_code == 403
    made = root.post("/v1/work/users", json={"name": "cy", "role": "coder"})
    assert made.status_code == 201 and len(made.json()["token"]) >= 40
    assert root.post("/v1/work/users", json={"name": "cy", "role": "coder"}).status_code == 409
    cy = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {made.json()['token']}"})
    assert cy.get("/v1/work/notes").status_code == 200
    assert root.post("/v1/work/users/root/disable").status_code == 409  # never locked out by oneself
    assert root.post("/v1/work/users/cy/disable").json()["disabled"] is True
    assert cy.get("/v1/work/notes").status_code == 401
    assert httpx.get(f"{url}/v1/work/notes").status_code == 401


def test_metrics_report_the_coders_verdicts_per_model(service):
    url, users = service
    ann = users["ann"]
    note_id, tag, codes = precoded_note(ann)
    ann.put(f"/v1/work/notes/{note_id}/decision", headers={"If-Match": tag},
            json={"rejected": codes, "added": [{"code": "Z99.89"}]})
    metrics = httpx.get(f"{url}/metrics").text
    assert 'clem_icd_work_notes{status="in review"} 1.0' in metrics
    assert f'verdict="rejected"}} {float(len(codes))}' in metrics
    assert 'verdict="added"} 1.0' in metrics
    assert "clem_icd_work_acceptance_rate{" in metrics
