"""Structured JSON log lines on stderr, one object per line.

Each line carries the time, level, logger, message, the current work context (correlation, tenant and
bot ids) and any ``extra={...}`` fields the caller passed, so one request or one inbound WhatsApp event
can be followed across actors with a single filter on ``correlation_id``.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

from core import context

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
_CORE = {"ts", "level", "logger", "msg"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = context.current()
        line: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("correlation_id", "tenant_id", "bot_id"):
            value = getattr(ctx, key)
            if value is not None:
                line[key] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                # An extra named like a core field is kept beside it, never over it.
                line[f"extra_{key}" if key in _CORE else key] = value
        if record.exc_info and record.exc_info[0] is not None:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str)


def setup(level: str = "info", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pykka logs every handled failure itself; ours are logged with context by actors.base.
    logging.getLogger("pykka").setLevel(logging.CRITICAL)
    # pgserver narrates every pg_ctl call at info level.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
