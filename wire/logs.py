"""The log line every yoloserve process writes: one JSON object per line on stderr (or plain text
for development), with the current request id.

Fields: ``ts``, ``level``, ``logger``, ``message``, ``request_id``, the record's extras
(``extra={...}``) and ``exception`` when there is one.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "request_id_var"]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
"""The request being served in this context; the handler adds it to every line."""

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """Plain lines for development: the message, then the record's own fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _extras(record).items() if k != "request_id")
        line = super().format(record)
        return f"{line} {extra}" if extra else line


_SERVERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error")


def configure_logging(fmt: Literal["json", "text"] | str = "json", level: str = "INFO",
                      stream: TextIO | None = None, quiet: Iterable[str] = ()) -> None:
    """Send every log record (uvicorn's and gunicorn's included) through one handler on stderr.

    ``quiet`` names loggers kept at WARNING (a library's chatter)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _SERVERS:
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the services write their own access log
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
