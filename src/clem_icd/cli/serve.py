"""`clem-icd serve`: the HTTP service and the coder's review page."""

from __future__ import annotations

from pathlib import Path

import typer

from clem_icd.cli import options


def serve(
    model: Path = typer.Option(..., "--model", "-m", help="Trained model folder (CLEM-ICD or TF-IDF)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Any address other than "
                             "loopback needs --token-file."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    token_file: Path = typer.Option(None, "--token-file", help="File holding the bearer token clients must "
                                    "send (Authorization: Bearer <token>) to /v1/*; at least 16 characters."),
    max_chars: int = typer.Option(100_000, "--max-chars", help="Longest note in characters (413 above)."),
    max_notes: int = typer.Option(64, "--max-notes", help="Most notes in one request (413 above)."),
    max_body_bytes: int = typer.Option(16 * 2**20, "--max-body-bytes", help="Largest request body in bytes, "
                                       "chunked bodies included (413 above)."),
    max_batch_notes: int = typer.Option(64, "--max-batch-notes", help="Most notes the worker takes into one "
                                        "inference pass (from all waiting requests together)."),
    max_pass_tokens: int = typer.Option(65_536, "--max-pass-tokens", help="Most tokens (all notes together) the "
                                        "worker takes into one inference pass; bounds how long a pass keeps its "
                                        "first requests waiting."),
    max_batch_tokens: int = typer.Option(None, "--max-batch-tokens", help="Token budget of a forward batch within "
                                         "a pass: notes x the longest one's tokens (a pass is sorted by length "
                                         "first). Default: 2,048 on CPU (small batches are fastest there), 16,384 "
                                         "on GPU (e.g. two 8,192-token notes or 64 of 256)."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long the oldest waiting request waits "
                                      "for others to share its pass (a busy service batches without waiting)."),
    queue_size: int = typer.Option(256, "--queue-size", help="Most notes waiting; a request that does not fit "
                                   "gets 503 with Retry-After."),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds a request may take, waiting included (504)."),
    batching: bool = typer.Option(True, "--batching/--no-batching", help="Code concurrent requests together "
                                  "(default) or each alone."),
    drain_seconds: float = typer.Option(5.0, "--drain-seconds", help="After SIGTERM: report not ready but keep "
                                        "serving this long, then shut down gracefully."),
    cors_origin: list[str] = typer.Option(None, "--cors-origin", help="Allow browser pages from this origin "
                                          "(repeatable). Default: none (CORS off)."),
    db: str = typer.Option(None, "--db", help="The coding workbench's database (/v1/work: worklist, saved "
                           "decisions, users, audit log): a SQLite file path or postgresql+psycopg://user@host/db. "
                           "Create it with `clem-icd db upgrade --db ...`; needs the 'work' extra."),
    device: str = options.DEVICE,
    precision: str = options.PRECISION,
    log_level: str = typer.Option("info", "--log-level", help="critical, error, warning, info or debug. Logs "
                                  "never hold note text or ids at any level."),
) -> None:
    """Serve a trained model over HTTP: POST /v1/code, GET /v1/model, GET /v1/codes, /health/live,
    /health/ready, /metrics, API docs at /docs, and the coder's review page at /. Needs the
    'serve' extra (pip install 'clem-icd[serve]')."""
    from clem_icd.errors import ClemError
    from clem_icd.loading import model_type

    try:
        from clem_icd.serve.server import LOG_LEVELS
        from clem_icd.serve.server import serve as run
        from clem_icd.serve.settings import ServeSettings, read_token
    except ImportError as exc:
        raise ClemError(f"clem-icd serve needs the 'serve' extra: pip install 'clem-icd[serve]' ({exc.name} "
                        "is missing)") from None
    if log_level not in LOG_LEVELS:
        raise ClemError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got '{log_level}'")
    model_type(model)  # a folder that is no model stops here, before the server starts
    settings = ServeSettings(
        model=model, host=host, port=port, token=read_token(token_file) if token_file else None,
        max_chars=max_chars, max_notes=max_notes, max_body_bytes=max_body_bytes, max_batch_notes=max_batch_notes,
        max_pass_tokens=max_pass_tokens,
        max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, queue_size=queue_size,
        timeout_s=timeout, batching=batching, drain_s=drain_seconds, cors_origins=list(cors_origin or []),
        device=device, precision=precision, db=db)
    run(settings, log_level)
