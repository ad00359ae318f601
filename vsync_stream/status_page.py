"""The worker's status page (``GET /status``): one self-contained HTML document for operators.

No external assets (inline CSS and JavaScript, no CDN, no fonts: the page must work on a machine
without internet, and the Content-Security-Policy sent with it forbids anything else). The script
reads only the worker's own JSON endpoints — ``/vsync``, ``/verifications``, ``/reconciliations``
and ``/healthz``, none of which returns personal data — and redraws every few seconds:

- a table of participants × key types: entries, VSync (abbreviated; full value on hover), the last
  verification's result and time;
- running reconciliations with their phase and a progress bar, then the recent ones;
- the verification history as an inline SVG chart: one row per pair, one dot per verification,
  coloured by result.

Data is written into the DOM with ``textContent``/attributes only (never ``innerHTML``), so nothing a
JSON field holds can become markup. Rows carry ``data-*`` attributes (participant, key type,
entries, result) for tests and scripts.
"""

from __future__ import annotations

__all__ = ["CONTENT_SECURITY_POLICY", "STATUS_HTML"]

# Everything the page needs is inline; fetches go to this worker only.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")

_STYLE = """
:root { --ok: #1a7f37; --nok: #cf222e; --error: #9a6700; --muted: #57606a; --line: #d0d7de; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; }
header { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: baseline; padding: .8rem 1.2rem;
         background: #24292f; color: #fff; }
header h1 { font-size: 1.15rem; margin: 0 1rem 0 0; }
#health { display: inline-flex; flex-wrap: wrap; gap: .4rem; }
.chip { font-size: .8rem; padding: .1rem .5rem; border-radius: 1rem; background: #424a53; }
.chip.ready { background: var(--ok); } .chip.recovering { background: var(--error); }
main { padding: .5rem 1.2rem 2rem; max-width: 1200px; }
h2 { font-size: 1rem; margin: 1.4rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { background: var(--bg); font-weight: 600; font-size: .85rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
.badge { display: inline-block; min-width: 3.2rem; text-align: center; font-weight: 600; font-size: .8rem;
         padding: .05rem .4rem; border-radius: .3rem; color: #fff; background: var(--muted); }
.badge.OK { background: var(--ok); } .badge.NOK { background: var(--nok); } .badge.ERROR { background: var(--error); }
.muted { color: var(--muted); }
.bar { width: 14rem; height: .9rem; background: var(--line); border-radius: .45rem; overflow: hidden; }
.bar > div { height: 100%; background: #0969da; }
.bar.indeterminate > div { width: 100%; background: repeating-linear-gradient(45deg, #0969da 0 .5rem,
                            #54aeff .5rem 1rem); }
.error-note { color: var(--nok); }
.total, .legend { margin-right: 1rem; } .legend::before { content: "\\25CF"; margin-right: .25rem; }
.legend.OK::before { color: var(--ok); } .legend.NOK::before { color: var(--nok); }
.legend.ERROR::before { color: var(--error); }
svg text { font: 11px system-ui, sans-serif; fill: #1f2328; }
"""

_SCRIPT = """
"use strict";
const REFRESH_MS = 5000;
const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}
async function getJson(path) {
  const resp = await fetch(path, {cache: "no-store"});
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error || (path + " answered " + resp.status));
  return body;
}
const abbrev = (vsync) => vsync.slice(0, 8) + "\\u2026" + vsync.slice(-4);
const utc = (iso) => new Date(iso).toISOString().slice(0, 19).replace("T", " ") + " UTC";
function ago(iso) {
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return (s / 3600).toFixed(1) + " h ago";
  return Math.round(s / 86400) + " d ago";
}
const badge = (result) => el("span", {class: "badge " + (result || "none")}, result || "never");
function fail(id, err) {
  const note = document.getElementById(id);
  note.textContent = err ? String(err.message || err) : "";
}

function renderHealth(health) {
  const box = document.getElementById("health");
  box.replaceChildren(
    el("span", {class: "chip " + (health.ready ? "ready" : "recovering")}, health.ready ? "ready" : "recovering"),
    el("span", {class: "chip"}, "partitions " + (health.partitions.join(", ") || "none")),
    el("span", {class: "chip"}, "folded " + health.events.folded.toLocaleString("en-US")),
    el("span", {class: "chip"}, "dead-lettered " + health.events.deadLettered.toLocaleString("en-US")));
}

function renderPairs(doc) {
  const rows = doc.vsync.map((r) => {
    const last = r.lastVerification;
    return el("tr", {"data-participant": r.participant, "data-key-type": r.keyType, "data-entries": r.entries,
                     "data-result": last ? last.result : "none"},
      el("td", {}, r.participant), el("td", {}, r.keyType),
      el("td", {class: "num"}, r.entries.toLocaleString("en-US")),
      el("td", {title: r.vsync}, el("code", {}, abbrev(r.vsync))),
      el("td", {}, badge(last && last.result)),
      el("td", {class: "muted", title: last ? utc(last.at) : ""}, last ? ago(last.at) : ""));
  });
  document.querySelector("#pairs tbody").replaceChildren(...rows);
}

function progressBar(run) {
  const {done, total} = run.progress;
  if (!total) return el("div", {class: "bar indeterminate", role: "progressbar", "aria-label": run.phase},
                        el("div", {}));
  const pct = Math.min(100, Math.round(100 * done / total));
  return el("div", {class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": total,
                    "aria-valuenow": done, "aria-label": run.phase, title: done + " / " + total},
            el("div", {style: "width: " + pct + "%"}));
}

function renderReconciliations(doc) {
  const running = doc.running.map((run) => el("tr", {"data-reconciliation": run.id, "data-phase": run.phase},
    el("td", {}, run.participant), el("td", {}, run.keyType), el("td", {}, run.path),
    el("td", {"data-state": run.state || "running"},
       run.waitingFor ? run.phase + " (" + run.waitingFor + ")" : run.phase),
    el("td", {}, progressBar(run)),
    el("td", {class: "num"}, run.progress.done + " / " + (run.progress.total || "?")),
    el("td", {class: "muted"}, ago(run.startedAt))));
  document.querySelector("#running tbody").replaceChildren(...running);
  document.getElementById("running-none").hidden = running.length > 0;
  const recent = doc.recent.slice(0, 10).map((run) => el("tr", {"data-reconciliation": run.id},
    el("td", {}, run.participant), el("td", {}, run.keyType), el("td", {}, run.path), el("td", {}, badge(run.result)),
    el("td", {class: "num"}, "+" + run.added + " \\u2212" + run.removed + " ~" + run.changed),
    el("td", {class: "muted", title: utc(run.finishedAt)}, ago(run.finishedAt))));
  document.querySelector("#recent tbody").replaceChildren(...recent);
  document.getElementById("recent-none").hidden = recent.length > 0;
}

function renderHistory(verifications, pairs) {
  const chart = document.getElementById("history");
  const keys = pairs.length ? pairs : [...new Set(verifications.map((v) => v.participant + "/" + v.keyType))].sort();
  const left = 130, right = 20, top = 10, rowH = 22, width = 960;
  const height = top + rowH * keys.length + 30;
  chart.setAttribute("viewBox", "0 0 " + width + " " + height);
  chart.setAttribute("height", height);
  const parts = [];
  const times = verifications.map((v) => new Date(v.finishedAt).getTime());
  let t0 = Math.min(...times), t1 = Math.max(...times);
  if (!times.length) { t0 = Date.now() - 3600e3; t1 = Date.now(); }
  if (t1 - t0 < 60e3) { t0 -= 30e3; t1 += 30e3; }
  const x = (t) => left + (width - left - right) * (t - t0) / (t1 - t0);
  keys.forEach((key, i) => {
    const y = top + rowH * i + rowH / 2;
    parts.push(svg("text", {x: 4, y: y + 4}, key));
    parts.push(svg("line", {x1: left, x2: width - right, y1: y, y2: y, stroke: "#d0d7de"}));
  });
  const colour = {OK: "#1a7f37", NOK: "#cf222e", ERROR: "#9a6700"};
  // OK first, so a NOK or an ERROR at the same moment is drawn on top and stays visible.
  const ordered = [...verifications].sort((a, b) => (a.result === "OK" ? 0 : 1) - (b.result === "OK" ? 0 : 1));
  for (const v of ordered) {
    const i = keys.indexOf(v.participant + "/" + v.keyType);
    if (i < 0) continue;
    const dot = svg("circle", {cx: x(new Date(v.finishedAt).getTime()).toFixed(1), cy: top + rowH * i + rowH / 2,
                               r: v.result === "OK" ? 5 : 6, fill: colour[v.result] || "#57606a",
                               "data-result": v.result, class: "point"});
    dot.append(svg("title", {}, v.participant + "/" + v.keyType + " " + v.result + " " + utc(v.finishedAt)));
    parts.push(dot);
  }
  const axisY = top + rowH * keys.length + 16;
  parts.push(svg("text", {x: left, y: axisY}, utc(new Date(t0).toISOString())));
  parts.push(svg("text", {x: width - right, y: axisY, "text-anchor": "end"}, utc(new Date(t1).toISOString())));
  chart.replaceChildren(...parts);
  const counts = {OK: 0, NOK: 0, ERROR: 0};
  for (const v of verifications) counts[v.result] = (counts[v.result] || 0) + 1;
  document.getElementById("history-summary").replaceChildren(
    el("span", {class: "total"}, verifications.length + " verifications:"),
    ...Object.entries(counts).map(([result, n]) => el("span", {class: "legend " + result}, n + " " + result)));
}

async function refresh() {
  const [health, vsync, verifications, reconciliations] = await Promise.allSettled(
    [getJson("healthz"), getJson("vsync"), getJson("verifications?limit=500"), getJson("reconciliations")]);
  let pairs = [];
  if (health.status === "fulfilled") { renderHealth(health.value); fail("health-error"); }
  else fail("health-error", health.reason);
  if (vsync.status === "fulfilled") {
    renderPairs(vsync.value); fail("pairs-error");
    pairs = vsync.value.vsync.map((r) => r.participant + "/" + r.keyType);
  } else fail("pairs-error", vsync.reason);
  if (reconciliations.status === "fulfilled") { renderReconciliations(reconciliations.value); fail("recon-error"); }
  else fail("recon-error", reconciliations.reason);
  if (verifications.status === "fulfilled") {
    renderHistory(verifications.value.verifications, pairs); fail("history-error");
  } else fail("history-error", verifications.reason);
  document.getElementById("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
  document.body.dataset.state = "rendered";
}

refresh();
setInterval(refresh, REFRESH_MS);
"""

STATUS_HTML = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vsync-stream status</title>
<style>{_STYLE}</style>
</head>
<body data-state="loading">
<header><h1>vsync-stream</h1><span id="health"></span><span id="updated" class="chip"></span>
<span id="health-error" class="error-note"></span></header>
<main>
<h2>Participants &times; key types</h2>
<p id="pairs-error" class="error-note"></p>
<table id="pairs"><thead><tr><th>participant</th><th>key type</th><th>entries</th><th>VSync</th>
<th>last verification</th><th>at</th></tr></thead><tbody></tbody></table>

<h2>Reconciliations</h2>
<p id="recon-error" class="error-note"></p>
<table id="running"><thead><tr><th>participant</th><th>key type</th><th>path</th><th>phase</th><th>progress</th>
<th></th><th>started</th></tr></thead><tbody></tbody></table>
<p id="running-none" class="muted">No reconciliation running.</p>
<table id="recent"><thead><tr><th>participant</th><th>key type</th><th>path</th><th>result</th>
<th>corrections</th><th>finished</th></tr></thead><tbody></tbody></table>
<p id="recent-none" class="muted">No reconciliation recorded.</p>

<h2>Verification history</h2>
<p id="history-error" class="error-note"></p>
<p id="history-summary" class="muted"></p>
<svg id="history" width="100%" role="img" aria-label="verification history"></svg>
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""
