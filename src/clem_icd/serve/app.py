"""The HTTP service: `create_app(settings)` gives the FastAPI application `clem-icd serve` runs.

- The model loads in the inference thread after the server starts, then codes one warm-up note;
  until then `/health/ready` and `/v1/code` answer 503 (with Retry-After), `/health/live` 200.
- `/v1/*` needs the bearer token when one is set (compared in constant time).
- Limits: body bytes (FastAPI's max_body_size, which also counts chunked bodies), notes per
  request and characters per note (413); a malformed body is a 422 naming the field, without
  echoing the offending value (it could be note text); each request has a time limit (504).
- Logs and metrics never carry note text or note ids: handlers log counts and sizes only, and an
  unexpected error is logged by its class name.
- Every error answer is `ErrorResponse` and every route lists each status it can answer in
  `/openapi.json` (clem_icd.serve.contract); a fuzzer holds the service to it in the tests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib.resources import files

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException as StarletteHTTPException

from clem_icd.errors import ClemError
from clem_icd.inference import fhir
from clem_icd.serve.batcher import MicroBatcher, QueueFull
from clem_icd.serve.code_search import CodeIndex
from clem_icd.serve.contract import (
    BodyLimit,
    NoTracebacks,
    allowed_methods,
    error_responses,
    finish_schema,
)
from clem_icd.serve.engine import WARM_UP_TEXT, CodingEngine, RequestOptions
from clem_icd.serve.metrics import ServiceMetrics, WorkbenchCollector
from clem_icd.serve.precoder import PreCoder
from clem_icd.serve.review_routes import review_router
from clem_icd.serve.schemas import (
    CodeAnswer,
    CodeRequest,
    CodeSearch,
    FhirBundle,
    Liveness,
    ModelCard,
    Readiness,
)
from clem_icd.serve.settings import ServeSettings
from clem_icd.serve.work_routes import work_router
from clem_icd.version import __version__

log = logging.getLogger("clem_icd.serve")
STATIC = files("clem_icd.serve") / "static"

# The review page loads nothing from elsewhere; the browser enforces it.
PAGE_SECURITY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ServiceState:
    """What the health checks report: loading -> ready -> draining (or failed)."""

    def __init__(self) -> None:
        self.engine: CodingEngine | None = None
        self.index: CodeIndex | None = None
        self.ready = False
        self.draining = False
        self.failure: str | None = None
        self.last_pass_seconds = 1.0
        self.precoder = None  # the workbench's (with --db), once the model is ready
        self.precoding: asyncio.Task | None = None

    @property
    def serving(self) -> bool:
        return self.ready and not self.draining


def load_engine(settings: ServeSettings) -> CodingEngine:
    """Load the model and code one warm-up note (in the inference thread)."""
    from clem_icd.loading import load_model

    engine = CodingEngine(load_model(settings.model, device=settings.device), settings.model,
                          max_batch_tokens=settings.max_batch_tokens, precision=settings.precision)
    texts = [WARM_UP_TEXT]
    prepared, _ = engine.prepare(texts)
    engine.code(RequestOptions(explain="attention" if engine.neural else None), texts, prepared)
    return engine


def create_app(settings: ServeSettings, load=load_engine) -> FastAPI:
    """The application; `load(settings) -> CodingEngine` runs in the inference thread."""
    state = ServiceState()
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)

    def run_pass(options: RequestOptions, items: list) -> list[dict]:
        texts = [text for text, _ in items]
        prepared = None if items[0][1] is None else [note for _, note in items]
        return state.engine.code(options, texts, prepared)

    def on_pass(stats) -> None:
        metrics.record_pass(stats)
        state.last_pass_seconds = stats.seconds
        log.info("coded %d note(s) of %d request(s) in %.3f s", stats.notes, stats.requests, stats.seconds)

    # The workbench (--db): checked against the migrations before anything starts.
    store = None
    if settings.db is not None:
        from clem_icd.workbench.db import open_database
        from clem_icd.workbench.store import WorkStore

        store = WorkStore(open_database(settings.db))
        registry.register(WorkbenchCollector(store.stats))

    batcher = MicroBatcher(run_pass, max_notes=settings.max_batch_notes, max_tokens=settings.max_pass_tokens,
                           max_wait_s=settings.max_wait_ms / 1000, queue_notes=settings.queue_size,
                           batching=settings.batching, on_pass=on_pass)
    metrics.queue_notes.set_function(lambda: batcher.depth)
    metrics.ready.set_function(lambda: 1.0 if state.serving else 0.0)

    async def warm_up() -> None:
        try:
            state.engine = await batcher.call(load, settings)
        except ClemError as exc:
            state.failure = str(exc)
            log.error("the model could not be loaded: %s", exc)
            return
        except Exception as exc:  # noqa: BLE001 - its message could hold anything; the class is enough
            state.failure = f"loading failed ({exc.__class__.__name__})"
            log.error("the model could not be loaded: %s", exc.__class__.__name__)
            return
        engine = state.engine
        state.index = CodeIndex(engine.codes, engine.systems, engine.descriptions)
        state.ready = True
        log.info("ready: %d codes, threshold %.3f", len(engine.codes), engine.model.threshold)
        if store is not None:
            version = await run_in_threadpool(lambda: engine.model_version)
            state.precoder = PreCoder(store, precode, model_name=engine.card()["name"], model_version=version,
                                      batch_notes=settings.max_batch_notes)
            state.precoding = asyncio.get_running_loop().create_task(state.precoder.run())

    async def precode(texts: list[str]) -> list[dict]:
        """Queued notes through the batcher, beside the requests (waiting while its queue is full:
        a busy service is no failure of these notes)."""
        engine = state.engine
        options = RequestOptions(explain="attention" if engine.neural else None)
        prepared, lengths = await run_in_threadpool(engine.prepare, texts)
        items = list(zip(texts, prepared if prepared is not None else [None] * len(texts)))
        while True:
            try:
                job = batcher.submit(options, items, lengths)
                break
            except QueueFull:
                await asyncio.sleep(0.2)
        return await job.future

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        loading = asyncio.get_running_loop().create_task(warm_up())
        yield
        state.draining = True
        await asyncio.gather(loading, return_exceptions=True)
        if state.precoding is not None:  # a pass it started is finished by the batcher, then dropped
            state.precoding.cancel()
            await asyncio.gather(state.precoding, return_exceptions=True)
        await batcher.stop()
        if store is not None:
            store.db.dispose()

    app = FastAPIOffline(
        title="CLEM-ICD", version=__version__, lifespan=lifespan, max_body_size=settings.max_body_bytes,
        static_url="/docs-assets",
        description="Automated ICD-10 coding of clinical notes with evidence spans. `/v1/*` needs "
                    "`Authorization: Bearer <token>` when the service was started with --token-file.")
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.state.service = state
    # Outside everything else, so that Starlette's plain-text 413 for an oversize Content-Length is
    # never reached (contract.BodyLimit). FastAPIOffline builds a plain FastAPI: no subclass to override.
    # NoTracebacks outermost: the server never logs an unexpected error's traceback (note text).
    app.build_middleware_stack = lambda: NoTracebacks(BodyLimit(FastAPI.build_middleware_stack(app),
                                                                settings.max_body_bytes))
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(app).expose(
        app, include_in_schema=False)

    # ------------------------------------------------------------------ errors

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only where and what: pydantic's `input` would echo the value, which may be note text.
        errors = [{"loc": [str(part) for part in error["loc"]], "msg": error["msg"], "type": error["type"]}
                  for error in exc.errors()]
        first = errors[0] if errors else {"loc": ["body"], "msg": "malformed request"}
        return JSONResponse({"detail": f"{'.'.join(first['loc'])}: {first['msg']}", "errors": errors},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:  # Allow: every method of the path, not only one route's
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(allowed_methods(app.routes, request.url.path))}
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's own answer would be plain text, outside the error model.
        log.error("unexpected error: %s", exc.__class__.__name__)
        return JSONResponse({"detail": f"unexpected error ({exc.__class__.__name__})"}, status_code=500)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = finish_schema(FastAPI.openapi(app), settings.max_notes, settings.max_chars)
        return app.openapi_schema

    app.openapi = openapi

    def unavailable(detail: str, retry_after: float) -> HTTPException:
        return HTTPException(503, detail, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})

    # ------------------------------------------------------------------ security

    bearer = HTTPBearer(auto_error=False, description="The token in the file given to --token-file.")
    expected = settings.token.encode() if settings.token is not None else None

    async def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if expected is None:
            return
        given = credentials.credentials.encode() if credentials is not None else b""
        if not secrets.compare_digest(given, expected):
            metrics.refused.labels("unauthorized").inc()
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def engine_or_503() -> CodingEngine:
        # While draining, requests are still coded: they were sent before the load balancer
        # saw /health/ready turn 503, and the drain period exists to finish them.
        if state.failure:
            raise HTTPException(503, f"the model could not be loaded: {state.failure}")
        if not state.ready:
            raise unavailable("the model is loading", 5)
        return state.engine

    # ------------------------------------------------------------------ health and the page

    @app.get("/health/live", tags=["health"], response_model=Liveness)
    async def live() -> dict:
        """200 while the process runs."""
        return {"status": "live"}

    # A probe's 503 is its state, not an error: the same body as the 200.
    @app.get("/health/ready", tags=["health"], response_model=Readiness,
             responses={503: {"model": Readiness, "description": "loading, failed or draining",
                              "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}}})
    async def ready() -> JSONResponse:
        """200 once the model is loaded and warm; 503 before, after a failed load, and while draining."""
        if state.serving:
            return JSONResponse({"status": "ready"})
        status = "failed" if state.failure else "draining" if state.draining else "loading"
        return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": "5"})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), headers=PAGE_SECURITY)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    # ------------------------------------------------------------------ the API

    @app.get("/v1/model", tags=["coding"], dependencies=[Depends(authorized)], response_model=None,
             responses={200: {"model": ModelCard}, **error_responses(503)})
    async def model_card() -> dict:
        """What the model is: encoder, head, code count, threshold, `score_kind` (what its scores
        are: "probability", or "rank score" for a model fused by reciprocal rank, whose codes
        carry `score` but no `probability`), metrics, and the limits."""
        engine = engine_or_503()
        return {**engine.card(), "max_chars": settings.max_chars, "max_notes": settings.max_notes}

    @app.get("/v1/codes", tags=["coding"], dependencies=[Depends(authorized)], response_model=CodeSearch,
             responses=error_responses(422, 503))
    async def search_codes(q: str = Query(..., max_length=200, description="Code prefix or description words."),
                           limit: int = Query(20, ge=1, le=200)) -> dict:
        """The model's codes matching `q` (a code prefix, dots optional, or words of the description)."""
        engine_or_503()
        return {"codes": state.index.search(q, limit)}

    @app.post("/v1/code", tags=["coding"], dependencies=[Depends(authorized)], response_model=None,
              responses={200: {"model": CodeAnswer | FhirBundle,
                               "description": "`format: json`: CodeAnswer; `format: fhir`: FhirBundle."},
                         **error_responses(413, 422, 500, 503, 504)})
    async def code(body: CodeRequest, request: Request) -> dict:
        """Code notes: one result per note in request order, each the object `clem-icd predict`
        writes ({id, codes, truncated}, or {id, error} for a note that cannot be coded). Each code
        has `score` (what the threshold compares) and, when the model's scores are
        probabilities (`score_kind` in /v1/model), `probability`."""
        engine = engine_or_503()
        if len(body.notes) > settings.max_notes:
            raise HTTPException(413, f"notes: {len(body.notes)} notes in one request; the limit is "
                                     f"{settings.max_notes} (--max-notes)")
        for i, note in enumerate(body.notes):
            if len(note.text) > settings.max_chars:
                raise HTTPException(413, f"notes.{i}.text: {len(note.text)} characters; the limit is "
                                         f"{settings.max_chars} (--max-chars)")
        options = RequestOptions(top_k=body.top_k, threshold=body.threshold, explain=body.explain)
        log.debug("request: %d note(s), %d characters, %s", len(body.notes),
                  sum(len(note.text) for note in body.notes), options)
        try:
            engine.predictor(options)
        except ClemError as exc:
            raise HTTPException(422, str(exc)) from None

        errors, seen = {}, set()
        for i, note in enumerate(body.notes):  # as `predict` reads records
            if not note.text.strip():
                errors[i] = f"notes.{i}: empty note"
            elif note.id in seen:
                errors[i] = f"notes.{i}: duplicate id (an earlier note has it)"
            seen.add(note.id)
        codable = [i for i in range(len(body.notes)) if i not in errors]
        results = await _code_notes(engine, options, [body.notes[i].text for i in codable], request)
        coded = dict(zip(codable, results))
        records = [{"id": note.id, "error": errors[i]} if i in errors else {"id": note.id, **coded[i]}
                   for i, note in enumerate(body.notes)]
        if body.format == "fhir":
            bundle = fhir.bundle_header(datetime.now(UTC).isoformat(timespec="seconds"))
            return {**bundle, "entry": [entry for record in records for entry in fhir.bundle_entries(record)]}
        card = engine.card()
        return {"model": {"name": card["name"], "codes": card["codes"], "threshold": card["threshold"],
                          "score_kind": card["score_kind"], "explain": body.explain, "version": __version__},
                "results": records}

    async def _code_notes(engine: CodingEngine, options: RequestOptions, texts: list[str],
                          request: Request) -> list[dict]:
        if not texts:
            return []
        prepared, lengths = await run_in_threadpool(engine.prepare, texts)
        items = list(zip(texts, prepared if prepared is not None else [None] * len(texts)))
        try:
            job = batcher.submit(options, items, lengths)
        except QueueFull:
            metrics.refused.labels("queue_full").inc()
            passes = batcher.depth / settings.max_batch_notes + 1
            raise unavailable(f"busy: {batcher.depth} notes are waiting (--queue-size {settings.queue_size})",
                              passes * state.last_pass_seconds) from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.timeout_s
        while True:
            try:
                # Wake up now and then to notice a client that has gone or a deadline passed.
                return await asyncio.wait_for(asyncio.shield(job.future), min(0.25, deadline - loop.time()))
            except TimeoutError:
                pass
            except Exception as exc:  # noqa: BLE001 - the pass failed; its message could quote text
                log.error("an inference pass failed: %s", exc.__class__.__name__)
                raise HTTPException(500, f"coding failed ({exc.__class__.__name__})") from None
            if await request.is_disconnected():
                batcher.abandon(job)
                metrics.refused.labels("client_gone").inc()
                raise HTTPException(499, "client closed the request")
            if loop.time() >= deadline:
                batcher.abandon(job)
                metrics.refused.labels("timeout").inc()
                raise HTTPException(504, f"not coded within {settings.timeout_s:g} s (--timeout)")

    app.include_router(review_router(authorized))
    if store is not None:
        app.include_router(work_router(store, lambda: state.precoder and state.precoder.wake()))
    return app
