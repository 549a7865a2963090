"""The documents operators rely on belong to the repository: the contracts, the runbook, the
license, and links between them that resolve (issue #14)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy import chart_schema
from tests.deploy.test_alerts import github_anchors

REPO = Path(__file__).resolve().parents[2]
DOCS = [
    REPO / "README.md",
    REPO / "deploy" / "README.md",
    REPO / "helm" / "mindvideo-relay" / "README.md",
    REPO / "docs" / "contracts.md",
    REPO / "docs" / "runbook.md",
]
CONTRACT_SECTIONS = [
    "Data flow",
    "Request record",
    "Result record",
    "Idempotency",
    "Talking to MindVideo",
    "Webhooks",
    "Operator contract",
    "Production connectivity",
    "Spend budgets",
]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_cites_no_file_outside_the_repository() -> None:
    readme = (REPO / "README.md").read_text()
    assert "DESIGN" not in readme
    assert "(docs/contracts.md)" in readme
    assert "(docs/runbook.md)" in readme


def test_the_contracts_are_the_projects_own() -> None:
    text = (REPO / "docs" / "contracts.md").read_text()
    titles = re.findall(r"^## (\d)\. (.+)$", text, re.M)
    assert titles == [(str(n), t) for n, t in enumerate(CONTRACT_SECTIONS, start=1)]
    for header in ("webhook-id", "webhook-timestamp", "webhook-signature", "Idempotency-Key"):
        assert f"`{header}`" in text, header
    for header in ("error.reason", "original.offset", "event-id", "traceparent"):
        assert header in text, header
    named = set(re.findall(r"`RELAY_([A-Z0-9_]+)`", text))
    known = {name.upper() for name in chart_schema.setting_names()}
    # Budgets (section 9) are a contract other work implements; every other name is a setting.
    budget = {"BUDGETS", "PRICE_HINTS", "BUDGET_MODE"}
    assert named - budget <= known, named - budget - known
    assert "idempotency_conflict" in text


def test_the_runbook_covers_what_operators_ask() -> None:
    text = (REPO / "docs" / "runbook.md").read_text()
    anchors = github_anchors(text)
    for section in (
        "startup-exit-codes",
        "readyz",
        "consumer-lag",
        "duplicate-webhooks",
        "resetting-a-consumer-group",
        "redis-requirements",
    ):
        assert section in anchors, section
    for check in ("kafka", "redis", "webhooks", "mindvideo"):
        assert f"| `{check}` |" in text, f"/readyz check {check} is not explained"
    for code in ("`0`", "`1`", "`2`"):
        assert f"| {code} |" in text
    assert "maxmemory-policy noeviction" in text
    assert "appendonly yes" in text


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve()
        assert resolved.exists(), f"{doc.name}: {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in github_anchors(resolved.read_text()), f"{doc.name}: {target}"
