"""The status page (GET / on the REST port): one self-contained HTML document over the JSON of
status_page.py. A compact table of every model (filter, sort, a model's details on demand), kept
fast at a thousand models; no network but its own server, data rendered as text nodes only (model
names and load errors come from users), a strict Content-Security-Policy on top.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Mapping

from .status_page import JSON_PATH


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
.bar{display:flex;flex-wrap:wrap;align-items:center;gap:10px;padding:12px 24px 0}
.bar input,.bar select{font:inherit;padding:4px 8px;border:1px solid #cbd5e1;border-radius:6px;background:#fff}
.bar input{width:260px}
.count{color:var(--mute);font-size:13px}
.count b{color:#111827;font-variant-numeric:tabular-nums}
main{padding:10px 24px 24px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line);border-radius:8px;table-layout:fixed}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid var(--line);vertical-align:top;overflow-wrap:anywhere}
th{color:var(--mute);font-weight:500;font-size:12px;user-select:none}
#models>thead th{cursor:pointer;position:sticky;top:0;background:#fff}
#models>thead th[data-sort]::after{content:" \\25b4";color:#111827}
#models>thead th[data-sort=desc]::after{content:" \\25be"}
#models>thead th:first-child{width:28%}
td.n{text-align:right;font-variant-numeric:tabular-nums}
th.n{text-align:right}
tr.model{cursor:pointer}
tr.model:hover{background:#f9fafb}
tr.model.open{background:#eef2ff}
.badge{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;background:var(--mute)}
.LOADED,.AVAILABLE{background:var(--ok)}.LOADING,.START,.UNLOADING{background:var(--busy)}
.UNAVAILABLE,.failed{background:var(--bad)}
.UNLOADED{background:transparent;color:var(--mute);border:1px solid #d1d5db;font-weight:500}
.problem,td.error{color:var(--bad);white-space:pre-wrap;word-break:break-word;font-size:12px}
.problem{display:block}
tr.details>td{background:#fafafa;padding:8px 16px 14px}
tr.details table{border-radius:4px;margin:4px 0 10px}
h3{font-size:13px;margin:8px 0 2px;color:#374151}
.chip{display:inline-block;margin-right:6px;padding:0 7px;border:1px solid var(--line);border-radius:10px;font-size:12px;color:#374151}
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
const dash = "\\u2014";
const num = (v, unit, digits) => v === null || v === undefined ? dash : v.toFixed(digits) + unit;
const bytes = v => v === null || v === undefined ? dash : v >= 1 << 30 ? (v / (1 << 30)).toFixed(1) + " GiB"
  : (v / (1 << 20)).toFixed(1) + " MiB";
const shape = s => s === null ? "unknown rank" : "[" + s.join(", ") + "]";
const STATES = ["LOADED", "LOADING", "UNLOADED", "UNAVAILABLE"];
// Columns: heading, sort key, the row's value for sorting, and its cell.
const COLUMNS = [
  ["Model", "name", m => m.name, m => {
    const td = el("td", null, m.name);
    if (m.problem) { const p = el("span", "problem", m.problem); p.dataset.field = "problem"; td.append(p); }
    return td;
  }],
  ["State", "state", m => STATES.indexOf(m.state), m => {
    const td = el("td"); td.dataset.field = "state";
    td.append(el("span", "badge " + m.state, m.state === "UNLOADED" ? "unloaded" : m.state.toLowerCase()));
    td.title = {UNLOADED: "not loaded now: loads on its first request (--max_loaded_models)",
                LOADING: "a version is loading", LOADED: "serving", UNAVAILABLE: "no version can serve"}[m.state];
    return td;
  }],
  ["Version", "version", m => m.served_version ?? -1, m => cell("version", m.served_version ?? dash)],
  ["Requests/s", "rate", m => m.requests.per_second ?? -1, m => cell("rate", num(m.requests.per_second, "", 2))],
  ["p50", "p50", m => m.requests.p50_ms ?? -1, m => cell("p50", num(m.requests.p50_ms, " ms", 2))],
  ["Errors", "errors", m => m.requests.errors, m => cell("errors", m.requests.errors)],
  ["In flight", "in-flight", m => m.requests.in_flight, m => cell("in-flight", m.requests.in_flight)],
  ["Memory", "memory", m => m.memory_bytes ?? -1, m => cell("memory", bytes(m.memory_bytes))],
];
function cell(field, text) {
  const td = el("td", field === "version" ? null : "n", text); td.dataset.field = field; return td;
}
const view = {filter: "", state: "", sort: "name", desc: false, open: new Set(), details: new Map()};
let data = null;
function row(cells, attrs) {
  const tr = el("tr");
  for (const [k, v] of Object.entries(attrs || {})) tr.dataset[k] = v;
  for (const c of cells) tr.append(c instanceof Node ? c : el("td", null, c));
  return tr;
}
function table(cls, headings, rows) {
  const t = el("table", cls);
  const head = el("thead"); head.append(row(headings.map(h => el("th", null, h))));
  const body = el("tbody"); body.append(...rows);
  t.append(head, body);
  return t;
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
function details(name) {
  const td = el("td"); td.colSpan = COLUMNS.length;
  const m = view.details.get(name);
  if (!m) { td.append(el("p", "empty", "Loading\\u2026")); return td; }
  if (m.error) { td.append(el("p", "problem", m.error)); return td; }
  const labels = Object.entries(m.labels);
  if (labels.length) {
    const p = el("p");
    for (const [label, v] of labels) p.append(el("span", "chip", label + " \\u2192 " + v));
    td.append(p);
  }
  if (m.problem) { const p = el("p", "problem", m.problem); p.dataset.field = "problem"; td.append(p); }
  const labelsOf = v => labels.filter(([, n]) => n === v).map(([l]) => l).join(", ");
  const state = v => { const c = el("td"); c.append(el("span", "badge " + v.state + (v.error ? " failed" : ""), v.state)); return c; };
  td.append(el("h3", null, "Versions"), m.versions.length ? table("versions",
    ["Version", "State", "Labels", "Requests answered", "Load error"],
    m.versions.map(v => row([String(v.version), state(v), labelsOf(v.version), String(v.requests),
                             el("td", "error", v.error || "")], {version: v.version})))
    : el("p", "empty", m.state === "UNLOADED" ? "Not loaded now: loads on its first request." : "No version found yet."));
  if (m.signatures.length) {
    td.append(el("h3", null, "Signatures of version " + m.served_version), table("signatures",
      ["Signature", "Method", "Inputs", "Outputs"],
      m.signatures.map(g => row([el("td", null, g.name), el("td", null, g.method), tensors(g.inputs), tensors(g.outputs)],
                                {signature: g.name}))));
  }
  return td;
}
async function fetchDetails(name) {
  try {
    const r = await fetch("v1/status?model=" + encodeURIComponent(name), {cache: "no-store"});
    const body = await r.json();
    view.details.set(name, r.ok ? body : {error: body.error || "HTTP " + r.status});
  } catch (e) { view.details.set(name, {error: e.message}); }
  if (view.open.has(name)) draw();
}
function shown() {
  const needle = view.filter.toLowerCase();
  const column = COLUMNS.find(c => c[1] === view.sort) || COLUMNS[0];
  const key = column[2];
  const models = data.models.filter(m => (!needle || m.name.toLowerCase().includes(needle)) &&
                                         (!view.state || m.state === view.state));
  models.sort((a, b) => { const x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : a.name < b.name ? -1 : 1) * (view.desc ? -1 : 1); });
  return models;
}
function draw() {
  const t0 = performance.now();
  document.getElementById("server").textContent =
    "version " + data.server.version + " \\u00b7 up " + Math.round(data.server.uptime_seconds) + " s \\u00b7 " +
    data.server.workers + (data.server.workers === 1 ? " worker" : " workers");
  const counts = Object.fromEntries(STATES.map(s => [s, 0]));
  for (const m of data.models) counts[m.state] = (counts[m.state] || 0) + 1;
  const summary = document.getElementById("counts");
  summary.replaceChildren(el("b", null, data.models.length), " models: ",
    ...STATES.flatMap((s, i) => { const b = el("b", null, counts[s]); b.dataset.state = s;
                                  return [i ? ", " : "", b, " " + s.toLowerCase()]; }));
  const models = shown();
  const body = document.createDocumentFragment();
  for (const m of models) {
    const tr = el("tr", "model" + (view.open.has(m.name) ? " open" : ""));
    tr.dataset.model = m.name; tr.dataset.state = m.state;
    for (const c of COLUMNS) tr.append(c[3](m));
    body.append(tr);
    if (view.open.has(m.name)) { const d = el("tr", "details"); d.dataset.details = m.name; d.append(details(m.name)); body.append(d); }
  }
  const tbody = document.querySelector("#models tbody");
  tbody.replaceChildren(body);
  if (!models.length) {
    const tr = el("tr"); const td = el("td", "empty", data.models.length ? "No model matches." : "No models configured.");
    td.colSpan = COLUMNS.length; tr.append(td); tbody.append(tr);
  }
  document.getElementById("shown").textContent = models.length === data.models.length ? "" : models.length + " shown";
  for (const th of document.querySelectorAll("#models thead th")) {
    if (th.dataset.key === view.sort) th.dataset.sort = view.desc ? "desc" : "asc"; else delete th.dataset.sort;
  }
  document.body.dataset.drawMs = (performance.now() - t0).toFixed(1);
}
function setup() {
  const head = document.querySelector("#models thead tr");
  for (const [heading, key] of COLUMNS) {
    const th = el("th", ["Model", "State", "Version"].includes(heading) ? null : "n", heading); th.dataset.key = key;
    th.addEventListener("click", () => { view.desc = view.sort === key ? !view.desc : false; view.sort = key; draw(); });
    head.append(th);
  }
  const select = document.getElementById("state");
  for (const s of STATES) select.append(new Option(s.toLowerCase(), s));
  select.addEventListener("change", () => { view.state = select.value; draw(); });
  const filter = document.getElementById("filter");
  filter.addEventListener("input", () => { view.filter = filter.value; draw(); });
  document.querySelector("#models tbody").addEventListener("click", e => {
    const tr = e.target.closest("tr.model");
    if (!tr) return;
    const name = tr.dataset.model;
    if (view.open.has(name)) view.open.delete(name); else { view.open.add(name); fetchDetails(name); }
    draw();
  });
  // ?model=NAME opens that model's details, ?filter= and ?state= preset the view (links, tests).
  const query = new URLSearchParams(location.search);
  if (query.get("filter")) { view.filter = filter.value = query.get("filter"); }
  if (query.get("state")) { view.state = select.value = query.get("state"); }
  if (query.get("model")) { view.open.add(query.get("model")); fetchDetails(query.get("model")); }
}
let updates = 0;  // refreshes fetched and shown (the tests read it)
function live(error) {
  const e = document.getElementById("live");
  e.className = "live" + (error ? " stale" : "");
  e.dataset.updates = updates;
  e.textContent = error ? "not updating (" + error + "), retrying\\u2026"
                        : "updated " + new Date().toLocaleTimeString() + ", every " + refreshMs / 1000 + " s";
}
data = JSON.parse(document.getElementById("initial").textContent);
const refreshMs = data.refresh_ms;
async function refresh() {
  try {
    const r = await fetch("v1/status", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    data = await r.json();
    for (const name of view.open) fetchDetails(name);
    draw();
    updates += 1;
    live(null);
  } catch (e) { live(e.message); }
  setTimeout(refresh, refreshMs);
}
setup(); draw(); live(null);
document.body.dataset.renderedMs = performance.now().toFixed(0);  // from navigation to the first table
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
         "<div class=\"bar\"><input id=\"filter\" type=\"search\" placeholder=\"Filter models by name\" "
         "aria-label=\"Filter models by name\"><select id=\"state\" aria-label=\"State\">"
         "<option value=\"\">every state</option></select><span class=\"count\" id=\"counts\"></span>"
         "<span class=\"count\" id=\"shown\"></span></div>"
         "<main><noscript>This page needs JavaScript; the same data is at "
         f"<a href=\"v1/status\">{JSON_PATH}</a>.</noscript>"
         "<table id=\"models\"><thead><tr></tr></thead><tbody></tbody></table></main>"
         "<script type=\"application/json\" id=\"initial\">__DATA__</script>"
         f"<script>{_SCRIPT}</script></body></html>\n")
