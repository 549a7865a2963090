"""The Grafana dashboard: well-formed panels in rows whose queries use metrics the relay exports,
scoped by the namespace and job variables.

PromQL syntax is checked by ``promtool check rules`` (Debian package ``prometheus``) when it is
installed: every query, its Grafana variables substituted, becomes a recording rule, which promtool
parses. tests/test_observability.py evaluates them against a real Prometheus.
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
    "info": ("_info",),
}
METRIC_NAME = re.compile(r"\b((?:relay|process)_[a-z0-9_]+)\b")
# Gauges every process sets to the same shared (Redis) value: summing them multiplies the truth.
SHARED_GAUGES = {"relay_webhook_pending_retries"}
VARIABLES = {"datasource", "namespace", "job"}
SCOPE = 'namespace=~"$namespace", job=~"$job"'
# What Grafana puts in place of the variables, for tools that read plain PromQL.
SUBSTITUTIONS = {"$__rate_interval": "1m", "$namespace": ".*", "$job": "mindvideo-relay"}


def plain_promql(expr: str) -> str:
    """A dashboard query as Grafana sends it, with "All" namespaces and the default job."""
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr


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


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def _targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in _panels(dashboard) for target in panel["targets"]]


def test_datasource_variable(dashboard: dict[str, Any]) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource"
    assert variable["query"] == "prometheus"
    assert dashboard["uid"] == "mindvideo-relay"


def test_namespace_and_job_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == VARIABLES
    for name in ("namespace", "job"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["multi"]
        assert variable["includeAll"]
        assert "label_values(relay_build_info" in variable["definition"]
        assert variable["definition"].endswith(f", {name})")
    # Without a namespace label (Compose) "All" must still match; the job's "All" is the list of
    # relay jobs, never ".*", which would pull other jobs' process_* series in.
    assert variables["namespace"]["allValue"] == ".*"
    assert "allValue" not in variables["job"]


def test_rows_group_the_panels(dashboard: dict[str, Any]) -> None:
    rows = [panel for panel in dashboard["panels"] if panel["type"] == "row"]
    assert [row["title"] for row in rows][:1] == ["Overview"]
    assert {"Process", "Spend", "Latency", "Dedupe and webhooks"} <= {r["title"] for r in rows}
    assert dashboard["panels"][0]["type"] == "row", "every panel sits under a row"
    for row in rows:
        assert row["gridPos"]["w"] == GRID_WIDTH
        assert row["collapsed"] is False


def test_panels_are_unique_and_queried(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels(dashboard):
        assert panel["title"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert any(t.get("expr", "").strip() for t in targets), panel["title"]
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["datasource"] == DATASOURCE


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:  # rows included
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
    assert {
        "relay_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    } <= used


def test_queries_fit_the_metric_types(dashboard: dict[str, Any]) -> None:
    for panel, target in _targets(dashboard):
        expr = target["expr"]
        for quantile in re.finditer(r"histogram_quantile\(([^,]+),(.*)\)", expr):
            assert 0 < float(quantile.group(1)) < 1, expr
            assert re.search(r"_bucket(\{[^}]*\})?\[", quantile.group(2)), expr
            assert re.search(r"by \((le\b|[^)]*\ble\b)", quantile.group(2)), expr
        for name in METRIC_NAME.findall(expr):
            counter = name.endswith(("_total", "_bucket", "_count", "_sum"))
            windowed = re.search(rf"(rate|increase)\({name}(\{{[^}}]*\}})?\[", expr)
            assert bool(windowed) == counter, f"{panel['title']}: {name} in {expr!r}"
        assert expr.count("(") == expr.count(")"), expr


def test_queries_are_scoped_windowed_and_aggregated_right(dashboard: dict[str, Any]) -> None:
    for panel, target in _targets(dashboard):
        expr = target["expr"]
        title = panel["title"]
        used = set(re.findall(r"\$(\w+)", expr))
        assert used <= {"namespace", "job", "__rate_interval"}, f"{title}: {used}"
        selectors = re.findall(r"\b(?:relay|process)_[a-z0-9_]+(\{[^}]*\}|)", expr)
        for selector in selectors:
            assert selector.startswith("{" + SCOPE), f"{title}: unscoped selector in {expr!r}"
        # rate() follows the scrape interval; increase() windows are what the panel is about
        # ("per hour", "last 24 h") and at least an hour long.
        for window in re.findall(r"\brate\([^\[]*\[([^\]]+)\]", expr):
            assert window == "$__rate_interval", f"{title}: rate over {window}"
        for window in re.findall(r"\bincrease\([^\[]*\[([^\]]+)\]", expr):
            assert window.endswith("h"), f"{title}: increase over {window}"
        for gauge in SHARED_GAUGES & set(METRIC_NAME.findall(expr)):
            assert re.search(rf"\bmax(\s+by\s*\([^)]*\))?\s*\(\s*{gauge}\b", expr), (
                f"{title}: sum of {gauge}"
            )


@pytest.mark.integration
def test_promql_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        assert not os.environ.get("CI"), "CI: promtool is missing; .ci/run installs it"
        pytest.skip("promtool not installed (apt-get install prometheus)")
    rules = [
        {
            "record": f"dashboard:panel{panel['id']}_{target['refId']}",
            "expr": plain_promql(target["expr"]),
        }
        for panel, target in _targets(dashboard)
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
