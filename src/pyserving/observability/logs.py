"""Log output: pyserving's text lines, or one JSON object a line (--log_format=json) for log pipelines."""

from __future__ import annotations

import json
import logging
import os
import re
import time

from .tracing import CURRENT

TEXT_FORMAT = "%(asctime)s %(levelname).1s {worker}%(name)s] %(message)s"
# Fields a record may carry through ``extra=`` (the access log's), copied into JSON lines as they are.
ACCESS_FIELDS = ("protocol", "api", "model", "version", "status", "http_status", "client", "reason", "latency_ms",
                 "trace_id", "span_id")


# C0 and C1 controls and DEL: a model name or a config value holding "\n2026-... I pyserving]"
# would otherwise forge a whole log line. JSON lines escape them already (json.dumps).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


class TextFormatter(logging.Formatter):
    """pyserving's text lines: one line per message, whatever its arguments hold (a traceback, the
    formatter's own addition, still spans lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if self._worker is not None:
            entry["worker"] = self._worker
        entry.update({k: getattr(record, k) for k in ACCESS_FIELDS if hasattr(record, k)})
        span = CURRENT.get()  # a line written while a traced request runs names its trace
        if span is not None and "trace_id" not in entry:
            entry["trace_id"], entry["span_id"] = span.ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format: str = "text") -> None:
    """Root logging at PYSERVING_LOG_LEVEL (INFO by default), in the given format."""
    logging.basicConfig(level=os.environ.get("PYSERVING_LOG_LEVEL", "INFO"))
    _set_formatter(log_format, None)
    # TensorFlow's loader logs routine notes at INFO through absl.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def set_worker(index: int) -> None:
    """In a --num_workers worker: every line says which worker wrote it."""
    json_format = any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
    _set_formatter("json" if json_format else "text", index)


def _set_formatter(log_format: str, worker: int | None) -> None:
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter(worker)
    else:
        formatter = TextFormatter(TEXT_FORMAT.format(worker="" if worker is None else f"w{worker} "))
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
