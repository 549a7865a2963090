"""The spend budget alerts (issue 13): their own group, the routed severities, a runbook section
each, aggregation by namespace and job, and promtool unit tests that make each one fire."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "alerts.yml"
CASES = REPO / "deploy" / "alerts_budgets_test.yml"
RUNBOOK = REPO / "docs" / "runbook.md"
GROUP = "mindvideo-relay-budgets"
RUNBOOK_URL = "https://github.com/mindvideo-relay/mindvideo-relay/blob/main/docs/runbook.md#"
EXPECTED = {
    "MindVideoBudgetNearLimit": "warning",
    "MindVideoBudgetExhausted": "critical",
    "MindVideoBudgetHeldTooLong": "warning",
}


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    (group,) = [g for g in groups if g["name"] == GROUP]
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def test_the_budget_alerts_are_routed_and_linked() -> None:
    rules = _rules()
    assert {r["alert"]: r["labels"]["severity"] for r in rules} == EXPECTED
    headings = re.findall(r"^#+\s+(.+?)\s*$", RUNBOOK.read_text(), re.M)
    anchors = {h.lower().replace(" ", "-") for h in headings}
    for rule in rules:
        notes = rule["annotations"]
        assert notes["summary"]
        assert notes["description"]
        assert notes["runbook_url"] == RUNBOOK_URL + rule["alert"].lower()
        assert rule["alert"].lower() in anchors, f"docs/runbook.md has no {rule['alert']}"


def test_every_aggregation_keeps_namespace_and_job_and_never_sums_redis_figures() -> None:
    for rule in _rules():
        expr = rule["expr"]
        for _operator, labels in re.findall(r"\b(sum|max|min|avg|count) by \(([^)]*)\)", expr):
            assert {"namespace", "job"} <= {label.strip() for label in labels.split(",")}
        for shared in ("relay_budget_spent_usd", "relay_budget_limit_usd"):
            assert f"sum by (namespace, job, budget, window) ({shared}" not in expr


def test_every_budget_alert_has_a_case_that_fires() -> None:
    fired = {
        case["alertname"]
        for test in yaml.safe_load(CASES.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == set(EXPECTED)


@pytest.mark.integration
def test_promtool_runs_the_budget_alert_cases() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        assert not os.environ.get("CI"), "CI: promtool is missing; .ci/run installs it"
        pytest.skip("promtool not installed (apt-get install prometheus)")
    done = subprocess.run(
        [promtool, "test", "rules", CASES.name],
        cwd=CASES.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
