"""deploy/alerts.yml: routed severities, runbook links that resolve, aggregation per namespace and
job, the exact scrape job, and promtool unit tests (deploy/alerts_test.yml) for every alert."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "alerts.yml"
ALERT_TESTS = REPO / "deploy" / "alerts_test.yml"
# The spend budgets' group has its cases in a file of its own (tests/deploy/test_budget_alerts.py).
BUDGET_ALERT_TESTS = REPO / "deploy" / "alerts_budgets_test.yml"
RUNBOOK = REPO / "docs" / "runbook.md"
JOB = "mindvideo-relay"
SEVERITIES = {"critical", "warning"}  # what kube-prometheus-stack routes
RUNBOOK_URL = "https://github.com/mindvideo-relay/mindvideo-relay/blob/main/docs/runbook.md"
AGGREGATION = re.compile(r"\b(sum|min|max|avg|count)\b\s*(by\s*\(([^)]*)\))?\s*\(")


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    found: list[dict[str, Any]] = [rule for group in groups for rule in group["rules"]]
    return found


@pytest.fixture(scope="module")
def cases() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = [
        case
        for path in (ALERT_TESTS, BUDGET_ALERT_TESTS)
        for case in yaml.safe_load(path.read_text())["tests"]
    ]
    return found


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, - for spaces."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.+?)\s*$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_severities_are_the_routed_ones(rules: list[dict[str, Any]]) -> None:
    assert len(rules) >= 10
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
    assert {rule["labels"]["severity"] for rule in rules} == SEVERITIES


def test_every_alert_links_its_runbook_section(rules: list[dict[str, Any]]) -> None:
    anchors = github_anchors(RUNBOOK.read_text())
    for rule in rules:
        annotations = rule["annotations"]
        assert annotations["summary"]
        assert annotations["description"]
        url = urlsplit(annotations["runbook_url"])
        assert url._replace(fragment="").geturl() == RUNBOOK_URL, rule["alert"]
        assert url.fragment in anchors, f"docs/runbook.md has no section #{url.fragment}"


def test_aggregations_keep_namespace_and_job_apart(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        expr = rule["expr"]
        aggregations = AGGREGATION.findall(expr)
        assert aggregations, f"{rule['alert']}: aggregate by namespace and job"
        for operator, _, by in aggregations:
            labels = {label.strip() for label in by.split(",")}
            assert {"namespace", "job"} <= labels, f"{rule['alert']}: {operator} without by"


def test_the_up_alert_matches_the_scrape_job_exactly(rules: list[dict[str, Any]]) -> None:
    (down,) = [rule for rule in rules if re.search(r"\bup\{", rule["expr"])]
    assert f'up{{job="{JOB}"}}' in down["expr"], "no regex: any job ending in 'relay' would match"
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    assert JOB in [job["job_name"] for job in scrape["scrape_configs"]]


def test_every_alert_has_a_unit_test_that_fires(
    rules: list[dict[str, Any]], cases: list[dict[str, Any]]
) -> None:
    fired = {
        check["alertname"]
        for case in cases
        for check in case["alert_rule_test"]
        if check.get("exp_alerts")
    }
    assert fired == {rule["alert"] for rule in rules}
    quiet = {
        check["alertname"]
        for case in cases
        for check in case["alert_rule_test"]
        if not check.get("exp_alerts")
    }
    assert quiet == fired, "each alert also has a case where it must stay silent"
    two_namespaces = [case for case in cases if "two namespaces" in case["name"]]
    assert any("MindVideoRelayLagGrowing" in case["name"] for case in two_namespaces)


@pytest.mark.integration
def test_promtool_unit_tests_pass() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        assert not os.environ.get("CI"), "CI: promtool is missing; .ci/run installs it"
        pytest.skip("promtool not installed (apt-get install prometheus)")
    for command in (
        ["check", "rules", str(ALERTS)],
        ["test", "rules", str(ALERT_TESTS)],
        ["test", "rules", str(BUDGET_ALERT_TESTS)],
    ):
        done = subprocess.run(
            [promtool, *command], capture_output=True, text=True, check=False, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
