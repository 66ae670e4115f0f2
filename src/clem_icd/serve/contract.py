"""What the service promises in `/openapi.json`, and the pieces that keep the promise.

- Every error answer, whatever raises it (our handlers, FastAPI's validation, Starlette's 404, 405
  and body limit), is `ErrorResponse`: `{"detail": "<one line>"}`, plus `errors` on a 422 for a
  malformed request. The schema says so on every route, for every status the route can answer.
- `error_responses(...)` gives a route's `responses=`; `finish_schema` then adds what every route
  gets without asking (400 where there is a body, 401 where a token is checked, 422 where there
  are parameters or a body, 500 everywhere) and drops FastAPI's `HTTPValidationError`, which the service never sends. A route
  added later is thus documented as the others are; tests/test_serve_schema.py and the fuzz test
  (tests/test_serve_fuzz.py) hold every route to it.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from clem_icd.serve.schemas import ErrorResponse

REF = "#/components/schemas/"
RETRY_AFTER = {"description": "Seconds to wait before trying again (absent when the model failed to load: "
                              "waiting will not help).", "schema": {"type": "integer", "minimum": 1}}

# Per status: what it means and an example answer, so a client can tell the cases apart.
ERRORS: dict[int, dict] = {
    400: {"description": "A body that cannot be read at all (not UTF-8): FastAPI's answer, before JSON parsing.",
          "examples": {"unreadable": {"detail": "There was an error parsing the body"}}},
    401: {"description": "Missing or wrong bearer token: on /v1/work a user's token (`clem-icd users add`), "
                         "elsewhere the service's (only when it was started with --token-file).",
          "headers": {"WWW-Authenticate": {"description": "Always `Bearer`.", "schema": {"type": "string"}}},
          "examples": {"unauthorized": {"detail": "missing or wrong bearer token"}}},
    403: {"description": "The user's role may not do this: only auditors (and admins) audit, only admins "
                         "manage users, only coders (and admins) code.",
          "examples": {"role": {"detail": "a coder may not audit a note"}}},
    404: {"description": "No note with this id (or no user with this name).",
          "examples": {"note": {"detail": "no note 10001-DS-1"}}},
    409: {"description": "The note's state does not allow this: claimed by another coder, already submitted, "
                         "not pre-coded yet; or a note id sent again with another text.",
          "examples": {"claimed": {"detail": "note 10001-DS-1 is in review by ann"}}},
    412: {"description": "If-Match names an older version than the note's: someone changed it since it was "
                         "read. Reload it (GET) and decide again; nothing was saved.",
          "examples": {"stale": {"detail": "note 10001-DS-1 has changed since version 3 (it is at version 4); "
                                           "reload it"}}},
    428: {"description": "If-Match is required: send the ETag of the note as read, so that a save never "
                         "overwrites a change it has not seen.",
          "examples": {"missing": {"detail": "If-Match: required (the note's ETag as read)"}}},
    413: {"description": "Too large: a note (--max-chars), the notes of one request (--max-notes) or the "
                         "body (--max-body-bytes).",
          "examples": {"note": {"detail": "notes.0.text: 120000 characters; the limit is 100000 (--max-chars)"},
                       "notes": {"detail": "notes: 65 notes in one request; the limit is 64 (--max-notes)"},
                       "body": {"detail": "the request body is larger than 16777216 bytes (--max-body-bytes)"}}},
    422: {"description": "A malformed request: `detail` names the first problem's place and `errors` lists "
                         "them all; the value sent is never echoed (it may be note text). Also a request the "
                         "model cannot serve (an explanation method a TF-IDF model lacks), without `errors`.",
          "examples": {"malformed": {"detail": "body.notes.0.text: Field required",
                                     "errors": [{"loc": ["body", "notes", "0", "text"], "msg": "Field required",
                                                 "type": "missing"}]},
                       "unservable": {"detail": "--explain needs a neural CLEM-ICD model; this is the TF-IDF baseline"}}},
    500: {"description": "An unexpected error, named by its class only.",
          "examples": {"failed": {"detail": "coding failed (RuntimeError)"}}},
    503: {"description": "Not now: the model is loading, failed to load, or the queue is full (see Retry-After).",
          "headers": {"Retry-After": RETRY_AFTER},
          "examples": {"loading": {"detail": "the model is loading"},
                       "busy": {"detail": "busy: 256 notes are waiting (--queue-size 256)"},
                       "failed": {"detail": "the model could not be loaded: model.safetensors: not found"}}},
    504: {"description": "Not coded within the time limit (--timeout), waiting included.",
          "examples": {"timeout": {"detail": "not coded within 60 s (--timeout)"}}},
}


def error_responses(*statuses: int) -> dict[int, dict]:
    """`responses=` for a route: each status with the error model, its meaning, headers and examples."""
    return {status: _error_response(status) for status in statuses}


def _error_response(status: int) -> dict:
    entry = ERRORS[status]
    examples = {name: {"value": value} for name, value in entry["examples"].items()}
    response = {"model": ErrorResponse, "description": entry["description"],
                "content": {"application/json": {"examples": examples}}}
    if "headers" in entry:
        response["headers"] = entry["headers"]
    return response


def finish_schema(schema: dict, max_notes: int, max_chars: int) -> dict:
    """The defaults every operation gets, and the service's limits written into the request schema
    (still answered 413 rather than 422: the limits are the server's settings, not the format)."""
    error_schema = {"$ref": REF + ErrorResponse.__name__}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if operation.get("security"):
                responses.setdefault("401", _openapi_error(401, error_schema))
            if "requestBody" in operation:
                responses.setdefault("400", _openapi_error(400, error_schema))
            if "422" in responses:  # FastAPI's own, for a route with parameters or a body
                responses["422"] = _openapi_error(422, error_schema)
            responses.setdefault("500", _openapi_error(500, error_schema))
            for parameter in operation.get("parameters", []):
                # If-Match is required: the route answers its absence with 428, not FastAPI's 422,
                # so the parameter is optional to FastAPI and required in the contract.
                if parameter["in"] == "header" and parameter["name"].lower() == "if-match":
                    parameter["required"] = True
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    if "CodeRequest" in components:
        components["CodeRequest"]["properties"]["notes"]["maxItems"] = max_notes
        components["Note"]["properties"]["text"]["maxLength"] = max_chars
    return schema


def _openapi_error(status: int, error_schema: dict) -> dict:
    response = _error_response(status)
    response.pop("model")
    response["content"]["application/json"]["schema"] = error_schema
    return response


class BodyLimit:
    """A declared Content-Length over the limit is refused here, in the error model, before the
    application runs: Starlette's own limiter answers that case in plain text. A body without a
    Content-Length (chunked) is still counted by FastAPI's `max_body_size`, which answers JSON."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = Headers(scope=scope).get("content-length", "")
            if length.isdigit() and int(length) > self.max_bytes:
                detail = f"the request body is larger than {self.max_bytes} bytes (--max-body-bytes)"
                await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class NoTracebacks:
    """Outermost: an unexpected error stops here. The app's handler has answered it (500, in the
    error model) and logged its class; Starlette then re-raises it for the server, whose log
    line would carry the whole traceback, and an exception's message or frame may quote note
    text. Swallowed, it is not logged again."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except Exception:  # noqa: BLE001 - answered and logged (by class) inside
            return



def allowed_methods(routes, path: str) -> list[str]:
    """Every method some route serves at `path`. Starlette's 405 names only the methods of the
    first route whose path matched, and a path may have one route per method (GET and POST
    /v1/work/notes)."""
    methods = set()
    for route in routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path) and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)
