"""Running the service in tests: in this process (uvicorn in a thread, so tests can give it a
slow or gated model) or as `clem-icd serve` in a subprocess (signals, logs as users see them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from clem_icd.serve.app import create_app, load_engine
from clem_icd.serve.engine import CodingEngine
from clem_icd.serve.settings import ServeSettings


class ThreadedService:
    """`with ThreadedService(settings, load) as url:` a real uvicorn server on a free loopback port."""

    def __init__(self, settings: ServeSettings, load=load_engine, wait_ready: bool = True):
        self.app = create_app(settings, load=load)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.wait_ready = wait_ready

    def __enter__(self) -> str:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the service did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        if self.wait_ready:
            wait_ready(self.url)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cli_service(model: Path, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`clem-icd serve` in a subprocess on a free port; its output (the logs) goes to `log` (a
    file, not a pipe: an unread pipe fills up and stalls the server)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "clem_icd.cli", "serve", "--model", str(model),
                                    "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
    return process, f"http://127.0.0.1:{port}"


def wait_ready(url: str, process: subprocess.Popen | None = None, log: Path | None = None,
               timeout: float = 120) -> None:
    """Wait for `/health/ready`; a service `process` that exits first fails with the end of its `log`."""
    def tail() -> str:
        return log.read_text(errors="replace")[-3000:] if log else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"clem-icd serve exited with status {process.returncode}:\n{tail()}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} was not ready in {timeout} s:\n{tail()}")


def slow_loader(delay_s: float, gate: threading.Event | None = None):
    """A loader whose engine takes `delay_s` per pass (and, with `gate`, whose loading waits for
    it): for timeouts, full queues, abandoned requests and readiness."""

    class SlowEngine(CodingEngine):
        def code(self, options, texts, prepared):
            time.sleep(delay_s)
            return super().code(options, texts, prepared)

    def load(settings: ServeSettings) -> CodingEngine:
        if gate is not None:
            gate.wait(30)
        engine = load_engine(settings)
        engine.__class__ = SlowEngine
        return engine

    return load
