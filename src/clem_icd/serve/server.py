"""Running the service under uvicorn: logs without note text, and draining on SIGTERM.

Draining: on SIGTERM the service turns not-ready at once (`/health/ready` 503, so a load
balancer stops sending to it) but goes on serving for `drain_s` seconds, then uvicorn shuts down
gracefully (it stops accepting, finishes the requests it has, then the queue is finished). A
second signal, or Ctrl-C, shuts down at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from urllib.parse import urlsplit

import uvicorn

from clem_icd.serve.app import create_app
from clem_icd.serve.settings import ServeSettings

log = logging.getLogger("clem_icd.serve")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")  # not uvicorn's 'trace': it logs bodies


class PathOnly(logging.Filter):
    """uvicorn's access log line without the query string: nothing a client put in a URL is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            record.args = (client, method, urlsplit(str(path)).path, version, status)
        return True


def logging_config(level: str) -> dict:
    formatter = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": formatter,
                       "access": {"()": "uvicorn.logging.AccessFormatter", "use_colors": False,
                                  "fmt": '%(asctime)s %(levelname)s access: %(client_addr)s "%(request_line)s" '
                                         '%(status_code)s'}},
        "filters": {"path_only": {"()": PathOnly}},
        "handlers": {"default": handler,
                     "access": {**handler, "formatter": "access", "filters": ["path_only"]}},
        "loggers": {"uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
                    "uvicorn.access": {"handlers": ["access"], "level": level.upper(), "propagate": False},
                    "clem_icd": {"handlers": ["default"], "level": level.upper(), "propagate": False}},
        # Every other library's records too, at the same level: what they log is checked as well.
        "root": {"handlers": ["default"], "level": level.upper()},
    }


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain_s: float):
        super().__init__(config)
        self.drain_s = drain_s

    def handle_exit(self, sig: int, frame) -> None:
        state = self.config.app.state.service
        if sig == signal.SIGTERM and not state.draining and self.drain_s > 0:
            state.draining = True
            log.info("SIGTERM: not ready; shutting down in %g s", self.drain_s)
            timer = threading.Timer(self.drain_s, super().handle_exit, (sig, frame))
            timer.daemon = True
            timer.start()
            return
        state.draining = True
        super().handle_exit(sig, frame)


def serve(settings: ServeSettings, log_level: str = "info") -> None:
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=logging_config(log_level),
                            log_level=log_level, proxy_headers=False, server_header=False,
                            timeout_graceful_shutdown=int(settings.timeout_s) + 5)
    DrainingServer(config, settings.drain_s).run()
