"""The status page (GET / on the REST port) and the JSON it refreshes from (GET /v1/status).

Every model with its versions, their states and load errors, its version labels, the signatures
of the version it serves (inputs and outputs with dtype and shape), and its request rate and
latency from the server's own metrics (over every worker with --num_workers). The page is one
self-contained HTML document: no network but its own server, data rendered as text nodes only
(model names and load errors come from users), a strict Content-Security-Policy on top.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import deque
from typing import Any, Awaitable, Callable, Mapping, Sequence

from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from pyserving import __version__
from pyserving.errors import ServingError
from pyserving.observability.monitoring import Family
from pyserving.serving.dataplane import DataPlane, ModelSpec
from pyserving.serving.responses import SIGNATURE_DEF_FIELD

JSON_PATH = "/v1/status"
REFRESH_MS = 2000
# Rates and latencies are over at least this many seconds (since start while the server is younger).
WINDOW_SECONDS = 10.0
MetricViews = Callable[[], Awaitable[Sequence[Sequence[Family]]]]  # each worker's metric families

_REQUESTS = ":tensorflow:serving:request_count"
_LATENCY = ":tensorflow:serving:request_latency"
_ANSWERED = ":pyserving:version_request_count"
_IN_FLIGHT = ":pyserving:requests_in_flight"


class StatusPage:
    def __init__(self, dataplane: DataPlane, metric_views: MetricViews | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._dataplane = dataplane
        self._views = metric_views
        self._clock = clock
        self._started = clock()
        # (time, {model: totals}) samples, one a second at most: the oldest is the rate's baseline.
        self._samples: deque[tuple[float, dict[str, list[float]]]] = deque([(self._started, {})])

    async def summary(self) -> dict[str, Any]:
        views = await self._views() if self._views else []
        totals, answered, in_flight = _tally(views)
        now = self._clock()
        seconds, before = self._baseline(now, totals)
        models = []
        for name in sorted(self._dataplane.readiness()):
            model = await self._model(name, answered)
            model["requests"] = _rates(totals.get(name), before.get(name), seconds, in_flight.get(name, 0))
            models.append(model)
        return {"server": {"version": __version__, "uptime_seconds": round(now - self._started, 1),
                           "workers": max(len(views), 1)},
                "window_seconds": round(seconds, 1), "refresh_ms": REFRESH_MS, "models": models}

    def _baseline(self, now: float, totals: dict[str, list[float]]) -> tuple[float, dict[str, list[float]]]:
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= now - WINDOW_SECONDS:
            samples.popleft()
        then, before = samples[0]
        if now - samples[-1][0] >= 1.0:
            samples.append((now, totals))
        return now - then, before

    async def _model(self, name: str, answered: Mapping[tuple[str, str], float]) -> dict[str, Any]:
        statuses = await self._dataplane.listed_status(name)  # none yet: the metadata error says why
        versions = [{"version": s.version, "state": s.state.name,
                     "error": f"{s.error.code.name}: {s.error.message}" if s.error else None,
                     "requests": int(answered.get((name, str(s.version)), 0))} for s in statuses]
        model: dict[str, Any] = {"name": name, "state": self._dataplane.model_state(name, statuses),
                                 "labels": self._dataplane.version_labels(name),
                                 "versions": versions, "served_version": None, "signatures": [],
                                 "problem": None}
        try:
            response = self._dataplane.metadata(ModelSpec(name), [SIGNATURE_DEF_FIELD])
        except ServingError as e:
            if not any(v["error"] for v in versions):  # else the versions' own errors say it
                model["problem"] = e.message
        else:
            model["served_version"] = response.model_spec.version.value
            model["signatures"] = _signatures(response)
        return model


def _tally(views: Sequence[Sequence[Family]]):
    """Per model: [requests, errors, latency sum (us), latency count]; answered requests per
    (model, version); requests in flight. Summed over the workers' families."""
    totals: dict[str, list[float]] = {}
    answered: dict[tuple[str, str], float] = {}
    in_flight: dict[str, float] = {}
    for view in views:
        for family, _kind, _help, samples in view:
            for sample, labels, value in samples:
                model = labels.get("model_name")
                if model is None:
                    continue
                if family == _REQUESTS:
                    counts = totals.setdefault(model, [0.0] * 4)
                    counts[0] += value
                    counts[1] += value if labels.get("status") != "OK" else 0
                elif family == _LATENCY and sample.endswith(("_sum", "_count")):
                    totals.setdefault(model, [0.0] * 4)[2 if sample.endswith("_sum") else 3] += value
                elif family == _ANSWERED:
                    key = (model, labels.get("version", ""))
                    answered[key] = answered.get(key, 0) + value
                elif family == _IN_FLIGHT:
                    in_flight[model] = in_flight.get(model, 0) + value
    return totals, answered, in_flight


def _rates(now: list[float] | None, before: list[float] | None, seconds: float, in_flight: float) -> dict:
    count, errors, latency_sum, latency_count = now or [0.0] * 4
    old = before or [0.0] * 4
    # A restarted worker's counts start again from 0: never a negative rate.
    new_requests, new_sum, new_count = (max(count - old[0], 0), max(latency_sum - old[2], 0),
                                        max(latency_count - old[3], 0))
    return {"total": int(count), "errors": int(errors), "in_flight": int(in_flight),
            "per_second": round(new_requests / seconds, 2) if seconds > 0 else None,
            "latency_ms": round(new_sum / new_count / 1000, 3) if new_count else None,
            "mean_latency_ms": round(latency_sum / latency_count / 1000, 3) if latency_count else None}


def _signatures(response) -> list[dict[str, Any]]:
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
    return [{"name": key, "method": sig.method_name,
             "inputs": _tensors(sig.inputs), "outputs": _tensors(sig.outputs)}
            for key, sig in sorted(signature_map.signature_def.items(), key=lambda kv: (kv[0] != "serving_default", kv[0]))]


def _tensors(infos) -> list[dict[str, Any]]:
    return [{"alias": alias, "tensor": info.name,
             "dtype": (types_pb2.DataType.Name(info.dtype) if info.dtype in types_pb2.DataType.values()
                       else str(info.dtype)),
             "shape": None if info.tensor_shape.unknown_rank else [d.size for d in info.tensor_shape.dim]}
            for alias, info in sorted(infos.items())]


def render(summary: Mapping[str, Any]) -> str:
    """The page, with ``summary`` inside as its first data (a JSON script block, '<' escaped, so no
    string in it can close the block)."""
    data = json.dumps(summary).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _PAGE.replace("__DATA__", data)


_STYLE = """
:root{--ok:#1a7f37;--bad:#c62828;--busy:#b26a00;--mute:#6b7280;--line:#e5e7eb;--bg:#f6f7f9}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#111827;background:var(--bg)}
header.top{display:flex;align-items:baseline;gap:16px;padding:14px 24px;background:#111827;color:#f9fafb}
header.top h1{font-size:18px;margin:0}
header.top .meta{color:#cbd5e1;font-size:13px}
header.top .live{margin-left:auto;font-size:13px}
.live.stale{color:#fca5a5}
main{padding:18px 24px;display:grid;gap:18px}
section.model{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 18px}
section.model h2{display:inline;font-size:17px;margin:0 10px 0 0}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;background:var(--mute)}
.AVAILABLE,.serving{background:var(--ok)}.loading,.unloaded{background:var(--mute)}.notserving,.END.failed{background:var(--bad)}
.LOADING,.START,.UNLOADING{background:var(--busy)}
.chip{display:inline-block;margin-left:6px;padding:0 7px;border:1px solid var(--line);border-radius:10px;font-size:12px;color:#374151}
.stats{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.stat{min-width:120px;padding:6px 12px;border-radius:6px;background:var(--bg)}
.stat b{display:block;font-size:20px;font-variant-numeric:tabular-nums}
.stat span{color:var(--mute);font-size:12px}
.problem,td.error{color:var(--bad);white-space:pre-wrap;word-break:break-word}
table{border-collapse:collapse;width:100%;margin:6px 0 4px;table-layout:fixed}
.versions th:nth-child(-n+4){width:12%}.signatures th:nth-child(-n+2){width:20%}
th,td{text-align:left;padding:4px 10px 4px 0;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}
th{color:var(--mute);font-weight:500;font-size:12px}
h3{font-size:13px;margin:12px 0 2px;color:#374151}
code,.tensor{font:12px/1.5 ui-monospace,"DejaVu Sans Mono",monospace}
.tensor{display:block}.tensor .dt{color:#1d4ed8}.tensor .sh{color:var(--mute)}
.empty{color:var(--mute)}
"""

_SCRIPT = """
"use strict";
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);  // never innerHTML
  return e;
};
const num = (v, unit, digits) => v === null || v === undefined ? "\\u2014" : v.toFixed(digits) + unit;
const shape = s => s === null ? "unknown rank" : "[" + s.join(", ") + "]";
function stat(field, value, caption) {
  const box = el("div", "stat");
  const b = el("b", null, value); b.dataset.field = field;
  box.append(b, el("span", null, caption));
  return box;
}
function tensors(list) {
  const td = el("td");
  for (const t of list) {
    const line = el("span", "tensor");
    line.title = t.tensor;
    line.append(el("span", null, t.alias + " "), el("span", "dt", t.dtype + " "), el("span", "sh", shape(t.shape)));
    td.append(line);
  }
  return td;
}
function row(cells, attrs) {
  const tr = el("tr");
  for (const [k, v] of Object.entries(attrs || {})) tr.dataset[k] = v;
  for (const c of cells) tr.append(c instanceof Node ? c : el("td", null, c));
  return tr;
}
function table(cls, headings, rows) {
  const t = el("table", cls);
  t.append(row(headings.map(h => el("th", null, h))), ...rows);
  return t;
}
function model(m, windowSeconds) {
  const s = el("section", "model"); s.dataset.model = m.name;
  const head = el("div");
  const serving = m.served_version !== null;
  // UNLOADED: under a budget of loaded models, it loads on its first request (not a fault).
  const badge = serving ? ["serving", "serving version " + m.served_version]
    : {LOADING: ["loading", "loading"], UNLOADED: ["unloaded", "unloaded: loads on its first request"]}[m.state]
      || ["notserving", "not serving"];
  head.append(el("h2", null, m.name), el("span", "badge " + badge[0], badge[1]));
  for (const [label, v] of Object.entries(m.labels)) head.append(el("span", "chip", label + " \\u2192 " + v));
  const r = m.requests;
  const stats = el("div", "stats");
  stats.append(stat("rate", num(r.per_second, "", 2), "requests/s, last " + Math.round(windowSeconds) + " s"),
               stat("latency", num(r.latency_ms, " ms", 2), "mean latency, last " + Math.round(windowSeconds) + " s"),
               stat("requests", r.total, "requests since start"),
               stat("errors", r.errors, "errors"),
               stat("in-flight", r.in_flight, "in flight"),
               stat("mean-latency", num(r.mean_latency_ms, " ms", 2), "mean latency since start"));
  s.append(head, stats);
  if (m.problem) { const p = el("p", "problem", m.problem); p.dataset.field = "problem"; s.append(p); }
  const labelsOf = v => Object.entries(m.labels).filter(([, n]) => n === v).map(([l]) => l).join(", ");
  const state = v => {
    const td = el("td");
    td.append(el("span", "badge " + v.state + (v.error ? " failed" : ""), v.state));
    return td;
  };
  s.append(el("h3", null, "Versions"), m.versions.length ? table("versions",
    ["Version", "State", "Labels", "Requests answered", "Load error"],
    m.versions.map(v => row([String(v.version), state(v), labelsOf(v.version), String(v.requests),
                             el("td", "error", v.error || "")], {version: v.version})))
    : el("p", "empty", "No version found yet."));
  if (m.signatures.length) {
    s.append(el("h3", null, "Signatures of version " + m.served_version), table("signatures",
      ["Signature", "Method", "Inputs", "Outputs"],
      m.signatures.map(g => row([el("td", null, g.name), el("td", null, g.method), tensors(g.inputs), tensors(g.outputs)],
                                {signature: g.name}))));
  }
  return s;
}
function render(data) {
  document.getElementById("server").textContent =
    "version " + data.server.version + " \\u00b7 up " + Math.round(data.server.uptime_seconds) + " s \\u00b7 " +
    data.server.workers + (data.server.workers === 1 ? " worker" : " workers");
  const main = document.querySelector("main");
  main.replaceChildren(...(data.models.length ? data.models.map(m => model(m, data.window_seconds))
                                              : [el("p", "empty", "No models configured.")]));
}
let updates = 0;  // refreshes fetched and shown (the tests read it)
function live(error) {
  const e = document.getElementById("live");
  e.className = "live" + (error ? " stale" : "");
  e.dataset.updates = updates;
  e.textContent = error ? "not updating (" + error + "), retrying\\u2026"
                        : "updated " + new Date().toLocaleTimeString() + ", every " + refreshMs / 1000 + " s";
}
const initial = JSON.parse(document.getElementById("initial").textContent);
const refreshMs = initial.refresh_ms;
async function refresh() {
  try {
    const r = await fetch("v1/status", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    updates += 1;
    live(null);
  } catch (e) { live(e.message); }
  setTimeout(refresh, refreshMs);
}
render(initial); live(null);
setTimeout(refresh, refreshMs);
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# Only this page's own script and style run: a name or error that slipped past as markup could not.
HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src "
                               f"{_sha256(_STYLE)}; connect-src 'self'; img-src data:; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}

_PAGE = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
         "<title>pyserving status</title><link rel=\"icon\" href=\"data:,\">"
         f"<style>{_STYLE}</style></head><body>"
         "<header class=\"top\"><h1>pyserving</h1><span class=\"meta\" id=\"server\"></span>"
         "<span class=\"live\" id=\"live\"></span></header>"
         "<main><noscript>This page needs JavaScript; the same data is at "
         f"<a href=\"v1/status\">{JSON_PATH}</a>.</noscript></main>"
         "<script type=\"application/json\" id=\"initial\">__DATA__</script>"
         f"<script>{_SCRIPT}</script></body></html>\n")
