"""FluxMQ logging: one line per event on standard error, as text or as JSON.

Callers attach structured fields with `extra=`:

    log = get_logger(__name__)
    log.info("client connected", extra={"client_id": cid, "remote": addr})

`text` renders `2026-11-26T13:30:01.123Z INFO fluxmq.broker: client connected client_id=c1
remote=127.0.0.1:50000`; `json` renders `{"ts": ..., "level": "INFO", "logger": ..., "msg": ...,
"client_id": ..., "remote": ...}`. `setup_logging` configures the `fluxmq` logger (and the
`asyncio` logger, at WARNING or above, so event-loop errors come out in the same format).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["LEVELS", "JSONFormatter", "TextFormatter", "get_logger", "setup_logging"]

ROOT = "fluxmq"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# Characters that make a text value need quoting.
_NEEDS_QUOTES = frozenset(' ="\\')


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra=` fields of a record, in the order they were given."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k[:1] != "_"}


class _UTCTimestamp:
    """`2026-11-26T13:30:01.123Z` for a record, caching the part that changes once a second."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: tuple[int, str] = (-1, "")

    def __call__(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached_second, prefix = self._cache  # one tuple: safe to share between threads
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._cache = (second, prefix)
        return f"{prefix}.{int(record.msecs):03d}Z"


def _text_value(value: Any) -> str:
    """A field value for the text format: bare if simple, else double-quoted and escaped."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and not _NEEDS_QUOTES.intersection(text):
        return text
    return orjson.dumps(text).decode()


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger>: <message> key=value ...`, then any traceback on its own lines."""

    def __init__(self) -> None:
        super().__init__()
        self._ts = _UTCTimestamp()

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self._ts(record)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = _extras(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _json_default(value: Any) -> Any:
    """Serialise what orjson cannot: bytes as text, anything else as `str(value)`."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: `ts`, `level`, `logger`, `msg`, then the `extra=` fields.

    A field that would clash with one of those four names gets a trailing underscore.
    Tracebacks go in `exc` (and stack traces in `stack`) as strings.
    """

    def __init__(self) -> None:
        super().__init__()
        self._ts = _UTCTimestamp()

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": self._ts(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            obj[key + "_" if key in obj else key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        return self._dumps(obj)

    @staticmethod
    def _dumps(obj: dict[str, Any]) -> str:
        opts = orjson.OPT_NON_STR_KEYS
        try:
            return orjson.dumps(obj, default=_json_default, option=opts).decode()
        except (orjson.JSONEncodeError, TypeError):  # e.g. an int wider than 64 bits
            safe = {k: v if isinstance(v, str) else repr(v) for k, v in obj.items()}
            return orjson.dumps(safe).decode()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the call (so redirection works)."""

    _fluxmq = True

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr


def _make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "text":
        return TextFormatter()
    if fmt == "json":
        return JSONFormatter()
    raise ValueError(f"unknown log format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _level(level: str) -> int:
    try:
        return LEVELS[level.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown log level {level!r} (expected debug, info, warning or error)")


def _install(logger: logging.Logger, level: int, handler: logging.Handler) -> None:
    """Replace any handler of ours on `logger` with `handler` and set the level."""
    for old in [h for h in logger.handlers if getattr(h, "_fluxmq", False)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Log `fluxmq.*` at `level` and above to standard error in format `fmt` (`text`/`json`).

    `level` is debug, info, warning (or warn) or error. Calling it again reconfigures rather
    than adding handlers. The `asyncio` logger gets the same handler at max(level, WARNING).
    Raises ValueError for an unknown level or format.
    """
    lvl = _level(level)
    handler = _StderrHandler()
    handler.setFormatter(_make_formatter(fmt))
    _install(logging.getLogger(ROOT), lvl, handler)
    _install(logging.getLogger("asyncio"), max(lvl, logging.WARNING), handler)


def get_logger(name: str) -> logging.Logger:
    """The logger `name` under the `fluxmq` hierarchy (`broker` -> `fluxmq.broker`)."""
    if name == ROOT or name.startswith(ROOT + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{ROOT}.{name}")
