"""structlog set-up: JSON lines off a TTY, coloured console on a TTY. Events are named ``area.event``."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

import orjson
import structlog
from structlog.typing import EventDict

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


_stamp_second = -1
_stamp_prefix = ""


def _add_timestamp(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """ISO 8601 UTC with microseconds, e.g. 2026-11-22T10:00:00.123456Z (structlog's TimeStamper(fmt="iso",
    utc=True), at a fifth of its cost: the date and time of day are formatted once per second)."""
    global _stamp_second, _stamp_prefix
    now = time.time()
    second = int(now)
    if second != _stamp_second:
        _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _stamp_second = second
    event_dict["timestamp"] = f"{_stamp_prefix}.{int((now - second) * 1e6):06d}Z"
    return event_dict


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
            _add_timestamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through stdlib logging (asyncio, aiosmtpd, aioimaplib) and the warnings module: their lines
    # go through the same renderer, so every line of the daemon's log is JSON (or console), values escaped.
    root = logging.getLogger()
    for handler in list(root.handlers):  # a plain console handler (basicConfig's) or ours from an earlier call
        if type(handler) is logging.StreamHandler or isinstance(handler, _LibraryHandler):
            root.removeHandler(handler)
    root.addHandler(_LibraryHandler())
    root.setLevel(logging.WARNING if level != "debug" else logging.DEBUG)
    for noisy in ("mail.log", "aiosmtpd", "aioimaplib", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "debug" else logging.INFO)
    logging.captureWarnings(True)
    sys.unraisablehook = _log_unraisable


class _LibraryHandler(logging.Handler):
    """A stdlib log record as a structlog event `library.log` (logger, message; exception text if any)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            method = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning"}.get(
                record.levelno, "error")
            fields: dict[str, Any] = {"logger": record.name, "message": printable(record.getMessage(), 2000)}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            getattr(_library_log, method)("library.log", **fields)
        except Exception:
            self.handleError(record)


def _log_unraisable(unraisable: Any) -> None:
    """Exceptions Python cannot raise (in __del__, in a dropped task's callback): one JSON line, not stderr text."""
    exc = unraisable.exc_value
    _library_log.error("python.unraisable", message=printable(str(unraisable.err_msg or ""), 2000),
                       object=printable(repr(unraisable.object), 200),
                       exc_info=(type(exc), exc, unraisable.exc_traceback) if exc is not None else None)


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def printable(text: str | bytes, limit: int = 200) -> str:
    """Client bytes as a log value or reply fragment: control and non-ASCII characters escaped (\\x00, \\r,
    \\u00fc), cut to `limit` characters, so a client can neither forge log lines nor smuggle bytes into replies."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isascii() and text.isprintable():
        return text
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class _Logger:
    """What `get_logger` returns. structlog's lazy proxy assembles a new bound logger (and a PrintLogger) for
    every call, ~4 µs, and the spool logs a line per message; this one keeps what it assembled until structlog
    is configured anew (setup_logging, tests resetting it). `bind()` returns structlog's own bound logger."""

    __slots__ = ("_bound", "_config", "_proxy")

    def __init__(self, name: str) -> None:
        self._proxy = structlog.get_logger(name)
        self._bound: Any = None
        self._config: tuple[Any, ...] = ()

    def _current(self) -> Any:
        cfg = structlog.get_config()
        key = (cfg["processors"], cfg["logger_factory"], cfg["wrapper_class"], cfg["context_class"])
        if self._bound is None or any(a is not b for a, b in zip(key, self._config, strict=True)):
            self._bound = self._proxy.bind()
            self._config = key
        return self._bound

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current(), name)

    def bind(self, **values: Any) -> Any:
        return self._proxy.bind(**values)


def get_logger(name: str = "mailgw") -> Any:
    return _Logger(name)


_library_log = _Logger("library")
