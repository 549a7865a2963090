"""A small built-in status page at ``/`` for people without Grafana.

The page is static HTML with a script that reads ``/status.json`` every two seconds. Every number
on it is read from the same Prometheus registry that ``/metrics`` exports, so the page and the
metrics cannot disagree; the spend budgets' section comes from the figures the budget gauges are
set from (``relay.spend.monitor``), and draws the last hour's spend itself (inline SVG). It shows
idempotency keys, models, statuses, costs and error codes of recent results, and budget rule names
— never prompts, inputs, metadata (no tenant of a scoped budget) or secrets.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from relay import __version__
from relay.models import ResultRecord

RECENT_RESULTS = 25


@dataclass(frozen=True, slots=True)
class RecentResult:
    """What the page shows of one result: no input, no output URLs, no metadata."""

    completed_at: str
    idempotency_key: str
    model: str | None
    status: str
    cost_actual: float | None
    error_code: str | None

    @classmethod
    def of(cls, result: ResultRecord) -> RecentResult:
        return cls(
            completed_at=result.completed_at,
            idempotency_key=result.idempotency_key,
            model=result.model,
            status=result.status,
            cost_actual=result.cost_actual,
            error_code=result.error.code if result.error else None,
        )


class RecentResults:
    """The last results and the last failures this process published."""

    def __init__(self, size: int = RECENT_RESULTS) -> None:
        self.results: deque[RecentResult] = deque(maxlen=size)
        self.failures: deque[RecentResult] = deque(maxlen=size)

    def add(self, result: ResultRecord) -> None:
        entry = RecentResult.of(result)
        self.results.appendleft(entry)
        if result.status != "succeeded":
            self.failures.appendleft(entry)


def _samples(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in registry.collect():
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **want: str) -> float:
    return sum(
        value
        for labels, value in samples.get(name, [])
        if all(labels.get(k) == v for k, v in want.items())
    )


def _by(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, label: str
) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, value in samples.get(name, []):
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


def status_document(
    registry: CollectorRegistry,
    recent: RecentResults,
    checks: dict[str, str | None],
    started_at: float,
    webhook_endpoints: list[dict[str, Any]] | None = None,
) -> dict[str, object]:
    """The JSON behind the status page; ``webhook_endpoints`` are the dispatcher's rows."""
    s = _samples(registry)
    terminal = _by(s, "relay_tasks_terminal_total", "status")
    return {
        "version": __version__,
        "uptime_s": round(time.time() - started_at, 1),
        "ready": all(problem is None for problem in checks.values()),
        "checks": {name: problem or "ok" for name, problem in checks.items()},
        "counts": {
            "consumed": _total(s, "relay_records_consumed_total"),
            "submitted": _total(s, "relay_tasks_submitted_total"),
            "succeeded": terminal.get("succeeded", 0.0),
            "failed": terminal.get("failed", 0.0),
            "cancelled": terminal.get("cancelled", 0.0),
            "rejected": terminal.get("rejected", 0.0),
            "in_flight": _total(s, "relay_tasks_in_flight"),
            "dedupe_hits": _total(s, "relay_dedupe_hits_total"),
            "dead_lettered": _total(s, "relay_records_dead_lettered_total"),
        },
        "spend_usd": {
            "estimated": round(_total(s, "relay_cost_estimated_usd_total"), 4),
            "actual": round(_total(s, "relay_cost_actual_usd_total"), 4),
            "actual_by_model": {
                model: round(value, 4)
                for model, value in _by(s, "relay_cost_actual_usd_total", "model").items()
            },
        },
        "webhooks": {
            "delivered": _total(s, "relay_webhook_deliveries_total", outcome="delivered"),
            "dead_lettered": _total(s, "relay_webhook_dead_lettered_total"),
            "pending_retries": _total(s, "relay_webhook_pending_retries"),
            "circuit_open_endpoints": _total(s, "relay_webhook_circuit_open_endpoints"),
            "attempts": _by(s, "relay_webhook_attempts_total", "outcome"),
            "endpoints": webhook_endpoints or [],
        },
        "recent_results": [asdict(r) for r in recent.results],
        "recent_failures": [asdict(r) for r in recent.failures],
    }


STATUS_PAGE_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mindvideo-relay</title>
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
 header{background:#1d2330;color:#fff;padding:12px 24px;display:flex;gap:16px;align-items:center}
 header h1{font-size:18px;margin:0}
 .pill{padding:2px 10px;border-radius:12px;font-weight:600}
 .ok{background:#2e9d5b} .bad{background:#c0392b}
 main{padding:16px 24px;display:grid;gap:16px}
 .cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:12px}
 .card{background:#fff;border-radius:8px;padding:12px;box-shadow:0 1px 2px #0002}
 .card .v{font-size:24px;font-weight:700} .card .k{color:#667}
 table{width:100%;border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden}
 th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #eee;font-size:13px}
 th{background:#eef0f4} h2{font-size:15px;margin:8px 0}
 #checks{font-size:13px} small{color:#667}
 .budget{background:#fff;border-radius:8px;padding:8px 12px;box-shadow:0 1px 2px #0002;
  margin:0 0 8px}
 .budget .name{font-weight:600} .budget .txt{font-size:13px;color:#445}
 .bar{position:relative;height:14px;background:#eef0f4;border-radius:7px;overflow:hidden;
  margin:4px 0}
 .bar>div{position:absolute;top:0;bottom:0}
 .bar .spent{left:0;background:#2e9d5b} .bar .reserved{background:#9cc9ae}
 .budget.warn .bar .spent{background:#d68910} .budget.full .bar .spent{background:#c0392b}
 #spend_chart{background:#fff;border-radius:8px;box-shadow:0 1px 2px #0002}
 #spend_chart rect{fill:#3c6fb4}
</style></head><body>
<header><h1>mindvideo-relay</h1><span id="ready" class="pill">…</span>
<span id="checks"></span><small id="updated"></small></header>
<main>
<section><h2>Requests</h2><div class="cards">
 <div class="card"><div class="v" id="consumed">–</div><div class="k">records consumed</div></div>
 <div class="card"><div class="v" id="submitted">–</div><div class="k">tasks submitted</div></div>
 <div class="card"><div class="v" id="in_flight">–</div><div class="k">in flight</div></div>
 <div class="card"><div class="v" id="succeeded">–</div><div class="k">succeeded</div></div>
 <div class="card"><div class="v" id="failed">–</div><div class="k">failed</div></div>
 <div class="card"><div class="v" id="cancelled">–</div><div class="k">cancelled</div></div>
 <div class="card"><div class="v" id="rejected">–</div><div class="k">rejected</div></div>
 <div class="card"><div class="v" id="dedupe_hits">–</div><div class="k">dedupe hits</div></div>
 <div class="card"><div class="v" id="dead_lettered">–</div><div class="k">dead letters</div></div>
</div></section>
<section><h2>Spend (USD)</h2><div class="cards">
 <div class="card"><div class="v" id="spend_actual">–</div><div class="k">actual</div></div>
 <div class="card"><div class="v" id="spend_estimated">–</div><div class="k">estimated</div></div>
</div></section>
<section id="budgets"><h2>Spend budgets</h2>
<p id="budgets_none" hidden><small>No spend budgets are set (RELAY_BUDGETS).</small></p>
<div id="budget_bars"></div>
<h2>Spend over the last hour (USD per minute, all relays)</h2>
<svg id="spend_chart" width="600" height="110" viewBox="0 0 600 110" role="img"
 aria-label="spend per minute over the last hour"></svg>
<div><small id="spend_hour_total"></small></div>
</section>
<section><h2>Webhooks</h2><div class="cards">
 <div class="card"><div class="v" id="wh_delivered">–</div><div class="k">delivered</div></div>
 <div class="card"><div class="v" id="wh_pending">–</div><div class="k">pending retries</div></div>
 <div class="card"><div class="v" id="wh_dead">–</div><div class="k">dead-lettered</div></div>
 <div class="card"><div class="v" id="wh_open">–</div><div class="k">circuits open</div></div>
</div></section>
<section><h2>Webhook endpoints <small>(configured origins, then the busiest others, marked
*; circuit and success rate are this process's)</small></h2>
<table><thead><tr><th>origin</th><th>circuit</th>
<th>success rate</th><th>attempts</th><th>pending</th><th>in flight</th><th>last error</th>
</tr></thead><tbody id="endpoints"></tbody></table></section>
<section><h2>Recent results</h2><table><thead><tr><th>completed</th><th>key</th>
<th>model</th><th>status</th><th>cost</th><th>error</th></tr></thead>
<tbody id="recent"></tbody></table></section>
<section><h2>Recent failures</h2><table><thead><tr><th>completed</th><th>key</th>
<th>model</th><th>status</th><th>cost</th><th>error</th></tr></thead>
<tbody id="failures"></tbody></table></section>
</main>
<script>
const token = new URLSearchParams(location.search).get("token");
const headers = token ? {Authorization: "Bearer " + token} : {};
const fmt = n => Number.isInteger(n) ? String(n) : n.toFixed(4);
function set(id, v) { document.getElementById(id).textContent = v; }
function cells(id, items, values) {
  const body = document.getElementById(id);
  body.replaceChildren(...items.map(r => {
    const tr = document.createElement("tr");
    for (const v of values(r)) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    return tr;
  }));
}
function rows(id, items) {
  cells(id, items, r => [r.completed_at, r.idempotency_key, r.model || "", r.status,
                         r.cost_actual == null ? "" : fmt(r.cost_actual), r.error_code || ""]);
}
const SVG = "http://www.w3.org/2000/svg";
function budgetRow(r) {
  const row = document.createElement("div");
  const limit = r.limit_usd, spent = r.spent_usd, reserved = r.reserved_usd;
  const pct = v => limit > 0 ? Math.min(100, 100 * v / limit) : (v > 0 ? 100 : 0);
  const used = pct(spent + reserved);
  row.className = "budget" + (used >= 100 ? " full" : used >= 80 ? " warn" : "");
  row.dataset.budget = r.name;
  row.dataset.spentPct = pct(spent).toFixed(2);
  row.dataset.usedPct = used.toFixed(2);
  const name = document.createElement("div"); name.className = "name";
  const scoped = r.scope === "global" ? "" : ` · fullest of ${r.instances} (${r.scope})`;
  name.textContent = `${r.name} · ${r.window}${scoped}`;
  const bar = document.createElement("div"); bar.className = "bar";
  const s = document.createElement("div"); s.className = "spent"; s.style.width = pct(spent) + "%";
  const q = document.createElement("div"); q.className = "reserved";
  q.style.left = pct(spent) + "%"; q.style.width = Math.max(0, used - pct(spent)) + "%";
  bar.append(s, q);
  const txt = document.createElement("div"); txt.className = "txt";
  const ends = new Date(r.window_end_s * 1000).toISOString().replace(".000Z", "Z");
  txt.textContent = `${fmt(spent)} spent + ${fmt(reserved)} reserved of ${fmt(limit)} USD ` +
    `(${used.toFixed(1)} %) · window ends ${ends} · ${r.held} held here`;
  row.append(name, bar, txt);
  return row;
}
function drawChart(points) {
  const svg = document.getElementById("spend_chart");
  const top = Math.max(0, ...points.map(p => p.usd));
  const w = 600 / Math.max(1, points.length);
  svg.replaceChildren(...points.map((p, i) => {
    const h = top > 0 ? 100 * p.usd / top : 0;
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("x", (i * w + 1).toFixed(1)); rect.setAttribute("width", (w - 2).toFixed(1));
    rect.setAttribute("y", (105 - h).toFixed(1)); rect.setAttribute("height", h.toFixed(1));
    rect.dataset.usd = p.usd;
    const title = document.createElementNS(SVG, "title");
    title.textContent = new Date(p.minute_s * 1000).toISOString().slice(11, 16) + " UTC: " +
      fmt(p.usd) + " USD";
    rect.appendChild(title);
    return rect;
  }));
}
function renderBudgets(b) {
  const configured = !!(b && b.configured);
  document.getElementById("budgets_none").hidden = configured;
  document.getElementById("budget_bars").replaceChildren(
    ...(configured ? b.rules.map(budgetRow) : []));
  drawChart(configured ? b.spend_last_hour : []);
  set("spend_hour_total", configured ? "last hour: " + fmt(b.spend_last_hour_usd) + " USD" : "");
}
async function refresh() {
  try {
    const res = await fetch("status.json", {headers});
    if (!res.ok) { set("updated", "status " + res.status); return; }
    const s = await res.json();
    const ready = document.getElementById("ready");
    ready.textContent = s.ready ? "ready" : "not ready";
    ready.className = "pill " + (s.ready ? "ok" : "bad");
    set("checks", Object.entries(s.checks).map(([k, v]) => k + ": " + v).join(" · "));
    for (const [k, v] of Object.entries(s.counts)) set(k, fmt(v));
    set("spend_actual", fmt(s.spend_usd.actual));
    set("spend_estimated", fmt(s.spend_usd.estimated));
    set("wh_delivered", fmt(s.webhooks.delivered));
    set("wh_pending", fmt(s.webhooks.pending_retries));
    set("wh_dead", fmt(s.webhooks.dead_lettered));
    set("wh_open", fmt(s.webhooks.circuit_open_endpoints));
    cells("endpoints", s.webhooks.endpoints, e => [
      e.origin + (e.configured ? "" : " *"), e.state,
      e.success_rate == null ? "" : (e.success_rate * 100).toFixed(1) + "%",
      e.attempts, e.pending, e.in_flight,
      e.last_error ? e.last_error + " (" + e.last_error_at + ")" : ""]);
    renderBudgets(s.budgets);
    rows("recent", s.recent_results);
    rows("failures", s.recent_failures);
    set("updated", "updated " + new Date().toLocaleTimeString());
  } catch (e) { set("updated", "unreachable"); }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"""
