"""--access_log: one line per inference request, with its outcome, latency and client (and its
trace, when tracing is on), as text or as JSON fields (logs.py)."""

from __future__ import annotations

import logging

from pyserving.errors import Code, http_status

from .tracing import RequestSpan

_access_log = logging.getLogger("pyserving.access")


def access_line(protocol: str, api: str, model: str, version: int | None, status: str, seconds: float,
            peer: str = "", reason: str = "", http: int | None = None, span: RequestSpan | None = None) -> None:
    """--access_log: one line per inference request (INFO, "pyserving.access")."""
    latency_ms = round(seconds * 1000, 3)
    if http is None and protocol == "REST" and status in Code.__members__:
        http = http_status(Code[status])
    fields = {"protocol": protocol, "api": api, "model": model, "version": version, "status": status,
              "http_status": http, "client": peer, "reason": reason, "latency_ms": latency_ms}
    trace = ""
    if span is not None:
        fields["trace_id"], fields["span_id"] = span.ids
        trace = " trace_id=%s span_id=%s" % span.ids
    _access_log.info("%s %s model=%s version=%s status=%s%s client=%s %.3f ms%s%s", protocol, api, model,
                     version if version is not None else "-", status, f" http={http}" if http else "",
                     peer or "-", latency_ms, f" reason={reason!r}" if reason else "", trace, extra=fields)
