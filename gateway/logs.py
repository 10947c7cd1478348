"""structlog set-up: JSON lines off a TTY, coloured console on a TTY. Events are named ``area.event``."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _CurrentStderr:
    """sys.stderr as it is at each write (tests and daemons may swap it after logging was set up)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def _dumps(obj: Any, **kw: Any) -> str:
    """orjson renders a log line in a tenth of json's time (a line per spooled message adds up); whatever it
    refuses (an integer over 64 bits, an exotic key) still goes out through json."""
    try:
        return orjson.dumps(obj, default=kw.get("default"), option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(obj, **kw)


def setup_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or _CurrentStderr()
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps) if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging; keep them quiet unless debugging.
    logging.basicConfig(level=logging.WARNING if level != "debug" else logging.DEBUG, stream=sys.stderr)
    for noisy in ("mail.log", "aiosmtpd", "aioimaplib", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "debug" else logging.INFO)


def get_logger(name: str = "mailgw") -> Any:
    return structlog.get_logger(name)
