"""The Grafana dashboard: well-formed panels whose queries use metrics the relay exports.

PromQL syntax is checked by ``promtool check rules`` (Debian package ``prometheus``) when it is
installed: every query becomes a recording rule, which promtool parses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.metrics import RelayMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "mindvideo-relay.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

# Metrics being added beside relay/metrics.py (webhook dispatcher, consumer lag): exact names.
PLANNED_METRICS = {
    "relay_webhook_attempts_total",
    "relay_webhook_delivery_latency_seconds_bucket",
    "relay_webhook_delivery_latency_seconds_sum",
    "relay_webhook_delivery_latency_seconds_count",
    "relay_webhook_pending_retries",
    "relay_webhook_dead_lettered_total",
    "relay_webhook_circuit_open_endpoints",
    "relay_webhook_deliveries_total",
    "relay_consumer_lag_records",
}
# What the dashboard must show (DESIGN §7 and the operator's questions).
REQUIRED_METRICS = PLANNED_METRICS - {
    "relay_webhook_delivery_latency_seconds_sum",
    "relay_webhook_delivery_latency_seconds_count",
} | {
    "relay_records_consumed_total",
    "relay_results_published_total",
    "relay_tasks_terminal_total",
    "relay_cost_actual_usd_total",
    "relay_cost_estimated_usd_total",
    "relay_task_duration_seconds_bucket",
    "relay_end_to_end_latency_seconds_bucket",
    "relay_mindvideo_responses_total",
    "relay_mindvideo_retries_total",
    "relay_event_stream_fallbacks_total",
    "relay_tasks_in_flight",
    "relay_partitions_paused",
    "relay_dedupe_hits_total",
}
_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}
METRIC_NAME = re.compile(r"\b(relay_[a-z0-9_]+)\b")


def exported_series() -> set[str]:
    """Series names the relay's registry exposes (counters with ``_total``, histogram parts)."""
    names: set[str] = set()
    for family in RelayMetrics().registry.collect():
        names.update(family.name + suffix for suffix in _SERIES_SUFFIXES.get(family.type, ("",)))
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in dashboard["panels"] for target in panel["targets"]]


def test_datasource_variable(dashboard: dict[str, Any]) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"
    assert dashboard["uid"] == "mindvideo-relay"


def test_panels_are_unique_and_queried(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert any(t.get("expr", "").strip() for t in targets), panel["title"]
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["datasource"] == DATASOURCE


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_queries_use_known_metrics(dashboard: dict[str, Any]) -> None:
    known = exported_series() | PLANNED_METRICS
    used: set[str] = set()
    for panel, target in _targets(dashboard):
        names = set(METRIC_NAME.findall(target["expr"]))
        assert names, f"{panel['title']}: no relay_ metric in {target['expr']!r}"
        assert names <= known, f"{panel['title']}: unknown {names - known}"
        used |= names
    assert used >= REQUIRED_METRICS, f"not on the dashboard: {REQUIRED_METRICS - used}"


def test_queries_fit_the_metric_types(dashboard: dict[str, Any]) -> None:
    for panel, target in _targets(dashboard):
        expr = target["expr"]
        for quantile in re.finditer(r"histogram_quantile\(([^,]+),(.*)\)", expr):
            assert 0 < float(quantile.group(1)) < 1, expr
            assert "_bucket[" in quantile.group(2), expr
            assert re.search(r"by \((le\b|[^)]*\ble\b)", quantile.group(2)), expr
        for name in METRIC_NAME.findall(expr):
            counter = name.endswith(("_total", "_bucket", "_count", "_sum"))
            windowed = re.search(rf"(rate|increase)\({name}(\{{[^}}]*\}})?\[", expr)
            assert bool(windowed) == counter, f"{panel['title']}: {name} in {expr!r}"
        assert expr.count("(") == expr.count(")"), expr
        assert "$" not in expr, "plain PromQL: no Grafana variables in queries"


@pytest.mark.integration
def test_promql_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        assert not os.environ.get("CI"), "CI: promtool is missing; .ci/run installs it"
        pytest.skip("promtool not installed (apt-get install prometheus)")
    rules = [
        {"record": f"dashboard:panel{panel['id']}_{target['refId']}", "expr": target["expr"]}
        for panel, target in _targets(dashboard)
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
