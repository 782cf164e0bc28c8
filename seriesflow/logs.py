"""Structured logging: one JSON object per line on stderr.

Modules log to named loggers (`logging.getLogger(__name__)`) and pass structured fields
with `extra={"fields": {...}}`; only the entry point calls `configure()`. Patient data
(names, IDs) must never be logged at INFO or above: log UIDs and counts instead.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any


class JsonFormatter(logging.Formatter):
    """Render a record as JSON: time, level, logger, message, then its structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines at `level` (the entry point's job)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs every PDU and identifiers at INFO/DEBUG, pgserver every command it
    # runs, alembic each built-in plugin it sets up ("setup plugin ...", every start):
    # keep them to problems only. Alembic's revision lines ("Running upgrade") stay.
    for chatty in ("pynetdicom", "pgserver", "alembic.runtime.plugins"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
