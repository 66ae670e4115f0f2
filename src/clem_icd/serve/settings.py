"""The service's settings, checked before anything starts: a bad setting is one line, never a
half-started server."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from clem_icd.errors import ClemError

LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}
# Default token budgets of a forward pass. On CPU, large batches are slower per note than small
# ones (measured with MiniLM coders on 2 cores: 2,048 tokens 15.1 notes/s, 16,384 tokens 9.2, one
# note at a time 12.1), so passes stay small; a GPU needs wide batches to be used at all.
CPU_BATCH_TOKENS = 2_048
GPU_BATCH_TOKENS = 16_384


@dataclass
class ServeSettings:
    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # bearer token; required unless the host is loopback
    max_chars: int = 100_000  # per note (413 above)
    max_notes: int = 64  # per request (413 above)
    max_body_bytes: int = 16 * 2**20  # per request body, chunked bodies included (413 above)
    max_batch_notes: int = 64  # notes per inference pass
    max_pass_tokens: int = 65_536  # tokens of all notes of an inference pass
    max_batch_tokens: int | None = None  # notes x longest note per forward batch; None: by device
    max_wait_ms: float = 5.0  # how long the oldest waiting request waits for company
    queue_size: int = 256  # notes waiting at most (503 above)
    timeout_s: float = 60.0  # per request, queueing included (504 above)
    batching: bool = True  # False: each request is coded alone (for comparison)
    drain_s: float = 5.0  # after SIGTERM: not ready, still serving, for this long; then shut down
    device: str = "auto"  # auto: cuda if available, else cpu
    precision: str = "auto"
    cors_origins: list[str] = field(default_factory=list)  # none: no CORS headers (browsers refuse)
    db: str | None = None  # the workbench database (--db): a SQLite path or a URL; None: no /v1/work

    def __post_init__(self) -> None:
        import torch

        self.model = Path(self.model)
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.max_batch_tokens is None:
            self.max_batch_tokens = GPU_BATCH_TOKENS if self.device.startswith("cuda") else CPU_BATCH_TOKENS
        positive = {"--max-chars": self.max_chars, "--max-notes": self.max_notes,
                    "--max-body-bytes": self.max_body_bytes, "--max-batch-notes": self.max_batch_notes,
                    "--max-pass-tokens": self.max_pass_tokens,
                    "--queue-size": self.queue_size}
        for name, value in positive.items():
            if value < 1:
                raise ClemError(f"{name} must be at least 1, got {value}")
        if self.max_batch_tokens < 1:
            raise ClemError(f"--max-batch-tokens must be at least 1, got {self.max_batch_tokens}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0 or self.drain_s < 0:
            raise ClemError("--max-wait-ms and --drain-seconds must be >= 0 and --timeout positive")
        if not 0 <= self.port <= 65535:
            raise ClemError(f"--port must be between 0 and 65535, got {self.port}")
        if self.token is None and not is_loopback(self.host):
            # Note text is protected health information: beyond this machine, only with a token.
            raise ClemError(f"--host {self.host} is reachable from other machines: give --token-file "
                            "(a file holding the bearer token clients must send), or serve on 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def read_token(path: Path) -> str:
    """The bearer token: the file's content without surrounding whitespace; at least 16
    characters (a guessable token protects nothing)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClemError(f"{path}: cannot read the token file ({exc.__class__.__name__})") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ClemError(f"{path}: the token must be one line of at least 16 characters without spaces "
                        "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token
