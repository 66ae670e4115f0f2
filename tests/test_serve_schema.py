"""`/openapi.json` tells the truth about errors: one error model (ErrorResponse) for every error
answer, every status each route can answer listed on it, and real error answers valid against
what the schema declares for them. In process, without a model (the fuzz test,
tests/test_serve_fuzz.py, runs schemathesis against a served model)."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest
from fastapi import Query
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from clem_icd.serve.app import create_app
from clem_icd.serve.settings import ServeSettings

TOKEN = "s3cret-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ERROR = {"$ref": "#/components/schemas/ErrorResponse"}

# The statuses each route of today can answer. A route added later gets 400/401/422/500 from
# contract.finish_schema as it needs them; its own statuses are its author's to list.
STATUSES = {
    ("get", "/health/live"): {"200", "500"},
    ("get", "/health/ready"): {"200", "503", "500"},
    ("get", "/v1/model"): {"200", "401", "503", "500"},
    ("get", "/v1/codes"): {"200", "401", "422", "503", "500"},
    ("post", "/v1/code"): {"200", "400", "401", "413", "422", "500", "503", "504"},
    ("post", "/v1/review/fhir"): {"200", "400", "401", "413", "422", "500"},
    # The workbench (with --db): no model needed; 403 for a role, 412/428 for If-Match.
    ("post", "/v1/work/notes"): {"200", "400", "401", "409", "413", "422", "500"},
    ("get", "/v1/work/notes"): {"200", "401", "422", "500"},
    ("get", "/v1/work/notes/{note_id}"): {"200", "401", "404", "422", "500"},
    ("get", "/v1/work/notes/{note_id}/history"): {"200", "401", "404", "422", "500"},
    ("post", "/v1/work/notes/{note_id}/claim"): {"200", "401", "403", "404", "409", "422", "500"},
    ("post", "/v1/work/notes/{note_id}/release"): {"200", "401", "403", "404", "409", "422", "500"},
    ("put", "/v1/work/notes/{note_id}/decision"): {"200", "400", "401", "403", "404", "409", "412", "422", "428",
                                                   "500"},
    ("post", "/v1/work/notes/{note_id}/submit"): {"200", "401", "403", "404", "409", "412", "422", "428", "500"},
    ("post", "/v1/work/notes/{note_id}/audit"): {"200", "400", "401", "403", "404", "409", "412", "422", "428", "500"},
    ("get", "/v1/work/export"): {"200", "401", "403", "422", "500"},
    ("get", "/v1/work/stats"): {"200", "401", "500"},
    ("get", "/v1/work/users"): {"200", "401", "403", "500"},
    ("post", "/v1/work/users"): {"201", "400", "401", "403", "409", "422", "500"},
    ("post", "/v1/work/users/{name}/disable"): {"200", "401", "403", "404", "409", "422", "500"},
}
# Not API operations: the docs pages and their assets, the schema itself, Prometheus, the page.
HIDDEN = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/docs-assets", "/metrics", "/", "/static"}


def never_loads(settings):
    raise AssertionError("these tests run without a model")


@pytest.fixture
def app(tmp_path):
    # No lifespan (TestClient outside `with`): the model never loads, so /v1/* answers 503. With
    # a workbench database, so that /v1/work is there too.
    from clem_icd.workbench.db import Database, upgrade

    db = tmp_path / "work.db"
    upgrade(Database(db))
    return create_app(ServeSettings(model=tmp_path, token=TOKEN, max_body_bytes=1_000, max_notes=3,
                                    max_chars=50, db=str(db)), load=never_loads)


@pytest.fixture
def client(app):
    return TestClient(app, raise_server_exceptions=False)


def operations(schema: dict):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def test_every_route_lists_each_status_it_can_answer_with_the_error_model(app):
    schema = app.openapi()
    found = {(method, path): operation for method, path, operation in operations(schema)}
    # iter_route_contexts: the routes of an included router too (FastAPI keeps those inside it).
    routes = {(method.lower(), route.path) for route in iter_route_contexts(app.routes)
              if isinstance(route.original_route, APIRoute) and route.include_in_schema for method in route.methods}
    assert set(found) == routes
    for key, statuses in STATUSES.items():
        assert set(found[key]["responses"]) == statuses, key
    for (method, path), operation in found.items():
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and path != "/health/ready":  # a probe's 503 is its state
                content = response["content"]["application/json"]  # (a 200 may be CSV: the export)
                assert content["schema"] == ERROR, (method, path, status)
                assert response["description"] and content["examples"], (method, path, status)
        if operation.get("security"):
            assert "401" in operation["responses"]
        assert "500" in operation["responses"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "ValidationError" not in schema["components"]["schemas"]
    assert set(found["get", "/health/ready"]["responses"]["503"]["headers"]) == {"Retry-After"}
    assert set(found["post", "/v1/code"]["responses"]["503"]["headers"]) == {"Retry-After"}
    assert set(found["get", "/v1/model"]["responses"]["401"]["headers"]) == {"WWW-Authenticate"}


def test_the_request_schema_carries_the_services_limits(app):
    components = app.openapi()["components"]["schemas"]
    assert components["CodeRequest"]["properties"]["notes"]["maxItems"] == 3
    assert components["Note"]["properties"]["text"]["maxLength"] == 50


def test_no_route_hides_from_the_schema_unnoticed(app):
    """A new route outside /openapi.json would escape the fuzzer: hiding one must be decided here."""
    hidden = {route.path for route in iter_route_contexts(app.routes) if not getattr(route, "include_in_schema", False)}
    assert hidden == HIDDEN


def test_a_route_added_later_is_documented_with_the_error_model(app, client):
    @app.get("/v1/later")
    async def later(n: int = Query(..., ge=1)) -> dict:
        raise RuntimeError("a bug")

    responses = app.openapi()["paths"]["/v1/later"]["get"]["responses"]
    assert set(responses) == {"200", "422", "500"}
    assert responses["422"]["content"]["application/json"]["schema"] == ERROR
    _valid(app.openapi(), client.get("/v1/later", params={"n": 0}), "/v1/later", "get", "422")
    failed = client.get("/v1/later", params={"n": 1})
    _valid(app.openapi(), failed, "/v1/later", "get", "500")
    assert failed.json() == {"detail": "unexpected error (RuntimeError)"}  # its message could quote text


def test_an_unexpected_error_reaches_no_log_with_its_message(app, caplog):
    """Starlette re-raises an unexpected error after the 500 for the server to log with its
    traceback, which could quote note text: it stops at the service (the test client would
    re-raise it too), and the one log line names its class only."""
    @app.get("/v1/boom")
    async def boom() -> dict:
        raise ValueError("note text: patient with chest pain")

    with caplog.at_level("DEBUG"):
        answer = TestClient(app).get("/v1/boom")  # raise_server_exceptions left on
    assert answer.status_code == 500 and answer.json() == {"detail": "unexpected error (ValueError)"}
    assert "chest pain" not in caplog.text and "Traceback" not in caplog.text
    assert "unexpected error: ValueError" in caplog.text


def _valid(schema: dict, response, path: str, method: str, status: str) -> None:
    assert str(response.status_code) == status, (path, response.status_code, response.text)
    assert response.headers["content-type"] == "application/json", (path, status)
    declared = schema["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    validator = jsonschema_rs.Draft202012Validator({**declared, "components": schema["components"]})
    errors = [error.message for error in validator.iter_errors(response.json())]
    assert not errors, (path, status, response.json(), errors)


def test_error_answers_match_the_schema(app, client):
    schema = client.get("/openapi.json").json()
    assert schema == app.openapi()
    body = json.dumps({"notes": [{"id": "a", "text": "y" * 2_000}]}).encode()
    cases = [
        (client.get("/v1/codes", params={"q": "x" * 201}, headers=AUTH), "/v1/codes", "get", "422"),
        (client.get("/v1/codes", params={"q": "x", "limit": "many"}, headers=AUTH), "/v1/codes", "get", "422"),
        (client.get("/v1/codes", params={"q": "x"}, headers=AUTH), "/v1/codes", "get", "503"),
        (client.post("/v1/code", headers=AUTH), "/v1/code", "post", "422"),
        (client.post("/v1/code", json={"notes": [], "top_k": True}, headers=AUTH), "/v1/code", "post", "422"),
        (client.post("/v1/code", json={"notes": [], "threshold": "0.5"}, headers=AUTH), "/v1/code", "post", "422"),
        (client.post("/v1/code", content=b'{"notes": [', headers={**AUTH, "Content-Type": "application/json"}),
         "/v1/code", "post", "422"),
        (client.post("/v1/code", content=b'r\xc3\x28', headers={**AUTH, "Content-Type": "application/json"}),
         "/v1/code", "post", "400"),
        (client.post("/v1/code", content=body, headers={**AUTH, "Content-Type": "application/json"}),
         "/v1/code", "post", "413"),
        (client.post("/v1/code", content=(body[i:i + 500] for i in range(0, len(body), 500)),
                     headers={**AUTH, "Content-Type": "application/json"}), "/v1/code", "post", "413"),
        (client.post("/v1/code", json={"notes": []}, headers=AUTH), "/v1/code", "post", "503"),
        (client.post("/v1/code", json={"notes": []}), "/v1/code", "post", "401"),
        (client.get("/v1/model"), "/v1/model", "get", "401"),
        (client.get("/v1/model", headers={"Authorization": f"Basic {TOKEN}"}), "/v1/model", "get", "401"),
        (client.get("/v1/model", headers=AUTH), "/v1/model", "get", "503"),
        (client.get("/health/ready"), "/health/ready", "get", "503"),
        (client.get("/health/live"), "/health/live", "get", "200"),
    ]
    for response, path, method, status in cases:
        _valid(schema, response, path, method, status)
    oversize = cases[8][0]
    assert oversize.json() == {"detail": "the request body is larger than 1000 bytes (--max-body-bytes)"}
    assert cases[3][0].json()["errors"] == [{"loc": ["body"], "msg": "Field required", "type": "missing"}]
    assert cases[4][0].json()["detail"] == "body.top_k: Input should be a number"
    assert cases[12][0].headers["WWW-Authenticate"] == "Bearer"
    assert int(cases[14][0].headers["Retry-After"]) >= 1


def test_answers_outside_the_operations_use_the_error_model_too(client):
    schema = client.get("/openapi.json").json()
    validator = jsonschema_rs.Draft202012Validator({**ERROR, "components": schema["components"]})
    for response, status in ((client.get("/v1/nothing", headers=AUTH), 404),
                             (client.delete("/v1/code", headers=AUTH), 405)):
        assert response.status_code == status and response.headers["content-type"] == "application/json"
        assert validator.is_valid(response.json()), response.json()


def test_examples_are_valid_error_answers(app):
    schema = app.openapi()
    validator = jsonschema_rs.Draft202012Validator({**ERROR, "components": schema["components"]})
    count = 0
    for _, path, operation in operations(schema):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and path != "/health/ready":
                for example in response["content"]["application/json"]["examples"].values():
                    assert validator.is_valid(example["value"]), example
                    count += 1
    assert count > 20
