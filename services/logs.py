"""Structured logs: JSON lines (or console lines), with tenant and query ids bound as context.

Our own code logs through structlog; the web server (uvicorn) logs through the standard
library, and its lines go through the same processors and renderer (structlog's
``ProcessorFormatter``), so that a deployment's output is one kind of line throughout.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog


def _shared_processors() -> list[structlog.typing.Processor]:
    """Exceptions are rendered as plain tracebacks, without the values of local variables,
    which could hold API keys or webhook secrets."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]


def _renderer(*, json: bool) -> structlog.typing.Processor:
    if json:
        return structlog.processors.JSONRenderer()
    return structlog.dev.ConsoleRenderer(colors=False)


def _wants_json(json: bool | None, stream: TextIO) -> bool:
    return not stream.isatty() if json is None else json


def configure_logging(
    *, level: str = "INFO", json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Log lines go to ``stream`` (stderr); JSON unless it is a terminal or ``json`` says."""
    stream = stream or sys.stderr
    structlog.configure(
        processors=[*_shared_processors(), _renderer(json=_wants_json(json, stream))],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )


def server_log_formatter(*, json: bool) -> logging.Formatter:
    """The formatter of the web server's standard-library log records (named in
    ``server_log_config``, so that uvicorn's worker processes build it too)."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _renderer(json=json),
        ],
    )


def server_log_config(*, level: str = "INFO", json: bool | None = None) -> dict[str, Any]:
    """uvicorn's ``log_config``: its startup, shutdown and error lines rendered like ours, on
    stderr. A plain dict of names and values, as uvicorn passes it to its worker processes."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structlog": {
                "()": "services.logs.server_log_formatter",
                "json": _wants_json(json, sys.stderr),
            }
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "structlog",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            # Off: services.api.access_log writes the access log, without query strings.
            "uvicorn.access": {"handlers": [], "propagate": False},
        },
    }
