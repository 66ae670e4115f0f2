"""POST /v1/review/fhir: a coder's decisions on one note as a FHIR R4 Bundle, made by
clem_icd.inference.fhir.decision_entries (the one FHIR mapping: the review page asks the server
for it rather than building its own). In process, without a model: the route needs none."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clem_icd.inference import fhir
from clem_icd.serve.app import STATIC, create_app
from clem_icd.serve.settings import ServeSettings
from clem_icd.version import __version__

TOKEN = "review-fhir-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MARKER = "Zebulon-Quartermaine-7731"  # a planted patient name that no answer or log line may hold
BASE = "https://github.com/clem-icd/clem-icd/fhir/StructureDefinition"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
NOTE = f"Seen today. Patient {MARKER} has pneumonia and hypertension; gastrectomy done."


def span(word: str, score: float | None = 0.25) -> dict:
    start = NOTE.index(word)
    return {"start": start, "end": start + len(word), "score": score, "text": word}


# One of each: the three decisions on diagnosis codes, accepted and rejected procedure codes, a
# probability, a rank score (no probability), an added code (neither), a span without a score.
DECISIONS = [
    {"code": "J18.9", "system": "icd10cm", "description": "Pneumonia, unspecified organism", "decision": "accepted",
     "probability": 0.91234567, "score": 0.91234567, "evidence": [span("pneumonia"), span(MARKER, None)]},
    {"code": "I10", "system": "icd10cm", "description": "Essential (primary) hypertension", "decision": "rejected",
     "probability": None, "score": 0.0328, "evidence": [span("hypertension")]},
    {"code": "E11.9", "system": "icd10cm", "description": "Type 2 diabetes mellitus without complications",
     "decision": "added", "probability": None, "score": None, "evidence": []},
    {"code": "0DT60ZZ", "system": "icd10pcs", "description": "Resection of Stomach, Open Approach",
     "decision": "accepted", "probability": 0.8, "score": 0.8, "evidence": [span("gastrectomy", 0.5)]},
    {"code": "0DT70ZZ", "system": "icd10pcs", "description": "", "decision": "rejected",
     "probability": 0.3, "score": 0.3, "evidence": []},
]


@pytest.fixture
def app(tmp_path):
    def never_loads(settings):
        raise AssertionError("the review route needs no model")

    # No lifespan (TestClient outside `with`): the model never loads, and the route answers anyway.
    return create_app(ServeSettings(model=tmp_path, token=TOKEN, max_body_bytes=20_000), load=never_loads)


@pytest.fixture
def client(app):
    return TestClient(app, raise_server_exceptions=False)


def export(client, decisions: list[dict], note_id: str = "note-7", headers: dict = AUTH):
    return client.post("/v1/review/fhir", json={"note_id": note_id, "decisions": decisions}, headers=headers)


def resources(bundle: dict) -> dict[str, dict]:
    return {entry["resource"]["code"]["coding"][0]["code"]: entry["resource"] for entry in bundle["entry"]}


def extensions(resource: dict, name: str) -> list[dict]:
    return [e for e in resource["extension"] if e["url"] == f"{BASE}/{name}"]


def span_of(extension: dict) -> dict:
    assert extension["url"] == f"{BASE}/evidence-span"
    return {part["url"]: next(v for k, v in part.items() if k.startswith("value")) for part in extension["extension"]}


def test_each_decision_is_the_resource_it_states_and_valid_r4(client):
    from fhirclient.models import bundle as fhirclient  # R4 models (the dev extra)

    answer = export(client, DECISIONS)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    bundle = answer.json()
    parsed = fhirclient.Bundle(bundle)  # strict: raises on unknown or missing required elements
    assert parsed.type == "collection" and len(parsed.entry) == len(DECISIONS)
    assert [e.resource.resource_type for e in parsed.entry] == ["Condition"] * 3 + ["Procedure"] * 2
    assert bundle["meta"]["tag"] == [{"system": "urn:clem-icd:generator", "code": f"clem-icd-{__version__}"}]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", bundle["timestamp"])

    found = resources(bundle)
    conditions = {code: found[code]["verificationStatus"]["coding"] for code in ("J18.9", "I10", "E11.9")}
    assert conditions == {"J18.9": [{"system": VERIFICATION, "code": "confirmed"}],
                          "I10": [{"system": VERIFICATION, "code": "refuted"}],
                          "E11.9": [{"system": VERIFICATION, "code": "confirmed"}]}
    assert {code: found[code]["status"] for code in ("0DT60ZZ", "0DT70ZZ")} == {
        "0DT60ZZ": "completed", "0DT70ZZ": "unknown"}
    for decision in DECISIONS:
        resource = found[decision["code"]]
        coding = {"system": fhir.SYSTEM_URIS[decision["system"]], "code": decision["code"]}
        if decision["description"]:
            coding["display"] = decision["description"]
        assert resource["code"] == {"coding": [coding]}
        assert resource["subject"] == {"identifier": {"system": "urn:clem-icd:note-id", "value": "note-7"},
                                       "display": "note note-7"}


def test_the_extensions_carry_the_decision_score_and_evidence(client):
    found = resources(export(client, DECISIONS).json())
    for decision in DECISIONS:
        assert extensions(found[decision["code"]], "review-decision") == [
            {"url": f"{BASE}/review-decision", "valueCode": decision["decision"]}]
    # A probability where there is one (rounded as predict's), else the rank score, named so;
    # an added code has neither.
    assert extensions(found["J18.9"], "probability") == [{"url": f"{BASE}/probability", "valueDecimal": 0.912346}]
    assert extensions(found["I10"], "probability") == []
    assert extensions(found["I10"], "rank-score") == [{"url": f"{BASE}/rank-score", "valueDecimal": 0.0328}]
    assert [e["url"] for e in found["E11.9"]["extension"]] == [f"{BASE}/review-decision"]

    # Condition: a span per evidence item, whose detail references the note; a span without a
    # score has no score part.
    evidence = found["J18.9"]["evidence"]
    assert [span_of(item["extension"][0]) for item in evidence] == [
        {"start": NOTE.index("pneumonia"), "end": NOTE.index("pneumonia") + 9, "score": 0.25, "text": "pneumonia"},
        {"start": NOTE.index(MARKER), "end": NOTE.index(MARKER) + len(MARKER), "text": MARKER}]
    assert all(item["detail"] == [found["J18.9"]["subject"]] for item in evidence)
    for item in evidence:
        s = span_of(item["extension"][0])
        assert NOTE[s["start"]:s["end"]] == s["text"]
    assert "evidence" not in found["E11.9"]
    # Procedure (R4 has no evidence element): the spans are extensions of the resource itself.
    assert [span_of(e) for e in extensions(found["0DT60ZZ"], "evidence-span")] == [
        {"start": NOTE.index("gastrectomy"), "end": NOTE.index("gastrectomy") + 11, "score": 0.5,
         "text": "gastrectomy"}]
    assert extensions(found["0DT70ZZ"], "evidence-span") == []


def test_full_urls_are_stable_distinct_and_the_route_is_decision_entries(client):
    first, again = export(client, DECISIONS).json(), export(client, list(reversed(DECISIONS))).json()
    urls = {resources({"entry": [e]}).popitem()[0]: e["fullUrl"] for e in first["entry"]}
    assert {resources({"entry": [e]}).popitem()[0]: e["fullUrl"] for e in again["entry"]} == urls
    assert len(set(urls.values())) == len(DECISIONS)
    assert all(uuid.UUID(url.removeprefix("urn:uuid:")) for url in urls.values())
    # A decision is not the suggestion it decides on: its own fullUrl.
    suggestion = fhir.bundle_entries({"id": "note-7", "codes": [{**DECISIONS[0], "evidence": []}]})
    assert suggestion[0]["fullUrl"] != urls["J18.9"]
    assert export(client, DECISIONS, note_id="note-8").json()["entry"][0]["fullUrl"] != urls["J18.9"]
    # The server's answer is the library's mapping (the workbench calls it directly) ...
    assert first["entry"] == fhir.decision_entries("note-7", DECISIONS)
    bundle = fhir.decision_bundle("note-7", DECISIONS, "2024-01-02T03:04:05+00:00")
    assert bundle["timestamp"] == "2024-01-02T03:04:05+00:00" and bundle["entry"] == first["entry"]
    # ... which takes the records a caller has, optional keys left out (system defaults as predict's).
    bare = fhir.decision_entries("n", [{"code": "I10", "decision": "accepted"}])[0]["resource"]
    assert bare["code"]["coding"] == [{"system": fhir.SYSTEM_URIS["icd10cm"], "code": "I10"}]
    assert bare["extension"] == [{"url": f"{BASE}/review-decision", "valueCode": "accepted"}]


def test_a_decision_that_cannot_be_stated_is_an_operation_outcome_naming_its_place(client):
    from fhirclient.models import bundle as fhirclient

    misfit = {**DECISIONS[1], "evidence": [{**span("hypertension"), "text": f"hypertension {MARKER}"}]}
    decisions = [DECISIONS[0], {**DECISIONS[0], "decision": "rejected"}, misfit, DECISIONS[3]]
    answer = export(client, decisions)
    assert answer.status_code == 200  # a well-formed body is answered; the bundle says what went wrong
    bundle = answer.json()
    fhirclient.Bundle(bundle)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["Condition", "OperationOutcome", "OperationOutcome", "Procedure"]
    issues = [bundle["entry"][i]["resource"]["issue"][0] for i in (1, 2)]
    assert [issue["diagnostics"] for issue in issues] == [
        "note note-7: decisions.1: icd10cm J18.9 has an earlier decision",
        f"note note-7: decisions.2.evidence.0: the text has {len(misfit['evidence'][0]['text'])} characters, "
        "end - start is 12"]
    assert all(issue["severity"] == "error" for issue in issues)
    assert MARKER not in json.dumps(bundle["entry"][1:3])
    assert len({e["fullUrl"] for e in bundle["entry"]}) == 4


def test_malformed_bodies_answer_422_naming_the_field_without_echoing_it(client):
    good = DECISIONS[0]
    cases = [
        ({"decisions": [good]}, "body.note_id"),
        ({"note_id": "", "decisions": []}, "body.note_id"),
        ({"note_id": "n", "decisions": [{**good, "decision": MARKER}]}, "body.decisions.0.decision"),
        ({"note_id": "n", "decisions": [{**good, "mrn": MARKER}]}, "body.decisions.0.mrn"),
        ({"note_id": "n", "decisions": [{**good, "code": f"J18 {MARKER} "}]}, "body.decisions.0.code"),
        ({"note_id": "n", "decisions": [{**good, "probability": 1.5}]}, "body.decisions.0.probability"),
        ({"note_id": "n", "decisions": [{**good, "score": "0.5"}]}, "body.decisions.0.score"),
        ({"note_id": "n", "decisions": [{**good, "evidence": [{"start": 0, "end": 3, "text": ""}]}]},
         "body.decisions.0.evidence.0.text"),
        ({"note_id": "n", "decisions": [{**good, "evidence": [{"start": -1, "end": 3, "text": MARKER}]}]},
         "body.decisions.0.evidence.0.start"),
        ({"note_id": "n", "decisions": [{**good, "evidence": [{"start": 0, "end": 2**31, "text": MARKER}]}]},
         "body.decisions.0.evidence.0.end"),
        ({"note_id": "n", "decisions": [{**good, "evidence": [{"start": 0, "end": 3}]}]},
         "body.decisions.0.evidence.0.text"),
    ]
    for body, field in cases:
        answer = client.post("/v1/review/fhir", json=body, headers=AUTH)
        assert answer.status_code == 422, (field, answer.text)
        assert answer.json()["detail"].startswith(f"{field}:"), (field, answer.json())
        assert MARKER not in answer.text
    # Not finite (Python's JSON reader takes NaN) and not JSON at all.
    for content, field in ((b'{"note_id": "n", "decisions": [{"code": "I10", "decision": "added", "score": NaN}]}',
                            "body.decisions.0.score"),
                           (f'{{"note_id": "{MARKER}", "decisions": ['.encode(), "body")):
        answer = client.post("/v1/review/fhir", content=content, headers={**AUTH, "Content-Type": "application/json"})
        assert answer.status_code == 422 and answer.json()["detail"].startswith(field), answer.text
        assert MARKER not in answer.text


def test_the_token_is_required(client):
    for headers in ({}, {"Authorization": "Bearer wrong-token-000000000000"}, {"Authorization": f"Basic {TOKEN}"}):
        answer = export(client, DECISIONS, headers=headers)
        assert answer.status_code == 401, headers
        assert answer.json() == {"detail": "missing or wrong bearer token"}
        assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_the_route_documents_each_status_and_refuses_an_oversize_body(app, client):
    schema = app.openapi()
    operation = schema["paths"]["/v1/review/fhir"]["post"]
    assert operation["tags"] == ["review"] and operation["security"]
    assert set(operation["responses"]) == {"200", "400", "401", "413", "422", "500"}
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ReviewBundle"}
    for status, response in operation["responses"].items():
        if status != "200":
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]["additionalProperties"] is False
    many = [{**DECISIONS[0], "code": f"X{i}"} for i in range(100)]
    answer = export(client, many)
    assert answer.status_code == 413
    assert answer.json() == {"detail": "the request body is larger than 20000 bytes (--max-body-bytes)"}
    body = json.dumps({"note_id": "n", "decisions": many}).encode()  # chunked: no Content-Length
    answer = client.post("/v1/review/fhir", content=(body[i:i + 5000] for i in range(0, len(body), 5000)),
                         headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.headers["content-type"] == "application/json"


def test_no_log_line_holds_note_text_or_id(client, caplog):
    with caplog.at_level("DEBUG"):
        assert export(client, DECISIONS, note_id=f"{MARKER}-id").status_code == 200
        assert client.post("/v1/review/fhir", json={"note_id": MARKER, "decisions": [{"text": MARKER}]},
                           headers=AUTH).status_code == 422
    assert "review bundle: 5 decision(s)" in caplog.text
    assert MARKER not in caplog.text


def test_the_page_loads_its_modules_as_javascript_and_builds_no_fhir(client):
    page = client.get("/")
    assert '<script type="module" src="static/js/main.js"></script>' in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    modules = sorted((Path(str(STATIC)) / "js").glob("*.js"))
    assert len(modules) > 5 and not (Path(str(STATIC)) / "app.js").exists()
    for module in modules:
        answer = client.get(f"/static/js/{module.name}")
        # A module script is refused by the browser unless it comes with a JavaScript MIME type.
        assert answer.status_code == 200
        assert answer.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
        text = module.read_text(encoding="utf-8")
        # The FHIR mapping is the server's (decision_entries): none of its names in the page.
        assert not re.search(r"StructureDefinition|verificationStatus|resourceType", text), module.name
        assert not re.search(r"\beval\(|new Function\(|console\.", text), module.name
