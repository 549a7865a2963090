"""Operators' view of a relay under load: promtool accepts /metrics, and a real Prometheus
scraping it evaluates every panel query of the Grafana dashboard to data (issue #5), with the
dashboard's namespace and job variables and ``$__rate_interval`` as Grafana fills them in, and
answers each variable's own query (issue #14)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.deploy.test_dashboard import plain_promql
from tests.spend.test_budgets_e2e import reconcile
from tests.support.observability import (
    VARIED_SIM_ARGS,
    produce_varied_load,
    start_loaded_relay,
)
from tests.support.pipeline import Pipeline
from tests.support.services import (
    ManagedProcess,
    TopicFactory,
    free_port,
    require_tool,
    wait_for_port,
)

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
# Spend budgets (issue 13): a budget that never binds, so its panels have data.
BUDGETS = '[{"name": "all", "scope": "global", "window": "month", "limit_usd": 1000}]'
DASHBOARD = DEPLOY / "grafana/dashboards/mindvideo-relay.json"
ALERTS = DEPLOY / "alerts.yml"


@pytest.fixture
def sim_args() -> list[str]:
    return VARIED_SIM_ARGS


def _tool(name: str) -> str:
    return require_tool(name, "prometheus")


def _dashboard_queries() -> list[tuple[str, str]]:
    def panels(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [p for item in items for p in [item, *panels(item.get("panels", []))]]

    doc = json.loads(DASHBOARD.read_text())
    return [
        (f"{p['id']} {p.get('title', '')}", plain_promql(t["expr"]))
        for p in panels(doc["panels"])
        for t in p.get("targets", [])
    ]


def _variable_queries() -> dict[str, tuple[str, str]]:
    """name -> (label, series selector) of each ``label_values(selector, label)`` variable."""
    doc = json.loads(DASHBOARD.read_text())
    found: dict[str, tuple[str, str]] = {}
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
            assert match, variable["definition"]
            found[variable["name"]] = (match.group(2), plain_promql(match.group(1)))
    return found


async def _query(session: aiohttp.ClientSession, base: str, expr: str) -> dict[str, Any]:
    async with session.get(f"{base}/api/v1/query", params={"query": expr}) as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def test_metrics_pass_promtool_and_every_dashboard_query_returns_data(
    pipeline: Pipeline, topics: TopicFactory, unique: str, tmp_path: Path
) -> None:
    prometheus_bin, promtool_bin = _tool("prometheus"), _tool("promtool")
    loaded = await start_loaded_relay(pipeline, topics, unique, RELAY_BUDGETS=BUDGETS)
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{ALERTS}']\n"
        "scrape_configs:\n"
        # The job name of deploy/prometheus.yml and the chart's ServiceMonitor, and the namespace
        # label a Kubernetes scrape adds.
        "  - job_name: mindvideo-relay\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{loaded.port}'],"
        " labels: {namespace: obs}}]\n"
    )
    prometheus = ManagedProcess(
        "prometheus",
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        tmp_path,
    )
    prometheus.start()
    try:
        await wait_for_port("127.0.0.1", prom_port, 30.0, prometheus)
        produced = await produce_varied_load(pipeline, unique, rounds=30)
        assert produced > 30
        await reconcile(pipeline, "10m")  # the relay exports the last drift: a panel shows it
        deadline = time.monotonic() + 15
        while await pipeline.metric(loaded.port, "relay_reconcile_last_run_timestamp_seconds") == 0:
            assert time.monotonic() < deadline, "the relay exports the last reconciliation"
            await asyncio.sleep(0.5)

        _, metrics_text = await pipeline.relay_get(loaded.port, "/metrics")
        promtool = await asyncio.create_subprocess_exec(
            promtool_bin,
            "check",
            "metrics",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        lint, _ = await promtool.communicate(metrics_text.encode())
        assert promtool.returncode == 0, lint.decode()
        assert lint.decode().strip() == "", f"promtool lint: {lint.decode()}"

        base = f"http://127.0.0.1:{prom_port}"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                up = await _query(session, base, "count_over_time(up{job='mindvideo-relay'}[1m])")
                if up["data"]["result"] and float(up["data"]["result"][0]["value"][1]) >= 5:
                    break
                await asyncio.sleep(1)
            while time.monotonic() < deadline + 15:  # the last reconciliation, scraped
                drift = await _query(session, base, "relay_reconcile_drift_usd")
                if drift["data"]["result"]:
                    break
                await asyncio.sleep(0.5)
            failures = []
            queries = _dashboard_queries()
            for panel, expr in queries:
                answer = await _query(session, base, expr)
                if answer.get("status") != "success":
                    failures.append(f"{panel}: {expr} -> {answer.get('error')}")
                elif not answer["data"]["result"]:
                    failures.append(f"{panel}: {expr} -> no data")
            for name, (label, selector) in _variable_queries().items():
                url = f"{base}/api/v1/label/{label}/values"
                async with session.get(url, params={"match[]": selector}) as resp:
                    values = (await resp.json())["data"]
                expected = ["obs"] if label == "namespace" else ["mindvideo-relay"]
                if values != expected:
                    failures.append(f"variable {name}: {selector} -> {values}")
            async with session.get(f"{base}/api/v1/rules") as resp:
                groups = (await resp.json())["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert len(rules) >= 10, "deploy/alerts.yml is loaded"
            for rule in rules:
                if rule["health"] != "ok":
                    failures.append(f"alert {rule['name']}: {rule.get('lastError')}")
        assert failures == [], "\n".join(failures)
        print(f"\n{len(queries)} dashboard queries returned data; {len(rules)} alert rules ok")
    finally:
        prometheus.stop()
        await loaded.receiver.stop()
