"""Structured logging: one JSON object a line on stderr.

``configure`` installs a formatter that writes ``time``, ``level``, ``logger``,
``message``, the current request id, and every ``extra=`` field, so a log line like
``log.info("serving", extra={"address": ...})`` is machine-readable. Secrets never
reach here by construction (keys travel as ``Secret``, whose str is masked); the
formatter also refuses to print values of fields whose names say they are secret.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from rmllm_common import requestctx

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET_NAMES = ("key", "token", "seed", "secret", "password", "authorization")


class JsonFormatter(logging.Formatter):
    """Formats records as single-line JSON objects."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = requestctx.request_id()
        if rid != "-":
            entry["request_id"] = rid
        for name, value in vars(record).items():
            if name in _STANDARD or name.startswith("_"):
                continue
            lowered = name.lower()
            if any(s in lowered for s in _SECRET_NAMES) and not lowered.endswith(("_id", "_hint", "_file")):
                entry[name] = "[redacted]"
            elif isinstance(value, (str, int, float, bool, type(None))):
                entry[name] = value
            else:
                entry[name] = str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "info") -> None:
    """Send JSON log lines at ``level`` and above to stderr (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
