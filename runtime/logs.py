"""Structured logs: one JSON object per line in production, readable text on a terminal.

Code logs an event name as the message and the facts as ``extra=``:
``log.info("batch committed", extra={"messages": 100, "ms": 41.2})``.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _extra(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "process": self._process,
            "pid": record.process,  # tells apart the processes of one gateway (gateway.processes)
            "logger": record.name,
            "event": record.getMessage(),
            **_extra(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        facts = " ".join(f"{k}={v}" for k, v in _extra(record).items())
        line = f"{ts} {record.levelname:<7} {self._process:<8} {record.getMessage()}"
        if facts:
            line = f"{line}  {facts}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure(process: str, log_format: str = "auto", level: str = "info") -> None:
    """Send every logger to stderr in the chosen format (call once, in ``main``)."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    formatter = JsonFormatter(process) if log_format == "json" else TextFormatter(process)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The AMQP libraries log every reconnect attempt with a traceback at warning level;
    # our own code logs the state changes that matter.
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
