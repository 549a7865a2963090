"""The status page's spend budgets in headless Chromium: a bar per budget showing what the metrics
show, a warning colour past 80 %, the held requests, and the last hour's spend drawn by the page
itself (inline SVG, no external asset)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.spend.test_budgets_e2e import HINTS, PRICE, _budgets, _charges, _eventually, _records
from tests.support.chromium import open_page
from tests.support.pipeline import Pipeline
from tests.test_status_page import DevTools

ROWS_JS = """JSON.stringify([...document.querySelectorAll('#budget_bars .budget')].map(r => ({
  name: r.dataset.budget, spent: +r.dataset.spentPct, used: +r.dataset.usedPct,
  cls: r.className, width: r.querySelector('.bar .spent').style.width, text: r.textContent})))"""
CHART_JS = """JSON.stringify([...document.querySelectorAll('#spend_chart rect')].map(
  r => +r.dataset.usd))"""


async def _rows(devtools: DevTools) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(await devtools.evaluate(ROWS_JS))
    return rows


async def test_budget_bars_and_the_last_hour_in_headless_chromium(
    pipeline: Pipeline, unique: str, tmp_path: Path
) -> None:
    env = {
        "RELAY_BUDGETS": _budgets(
            ("all", "global", "month", 0.2), ("tenant", "metadata.tenant", "day", 0.06)
        ),
        "RELAY_PRICE_HINTS": HINTS,
        "RELAY_BUDGET_RECHECK_S": "1",
    }
    _, port = await pipeline.start_relay(**env)
    u = unique[:8]
    await pipeline.produce(
        _records([f"t-{u}-{i}" for i in range(4)], metadata={"tenant": "acme-corp"})
        + _records([f"n-{u}-{i}" for i in range(2)])
    )

    async def settled() -> bool:
        spent = await pipeline.metric(port, "relay_budget_spent_usd", budget="all")
        held = await pipeline.metric(port, "relay_budget_held_requests", budget="tenant")
        return len(await _charges(pipeline)) == 4 and abs(spent - 4 * PRICE) < 1e-9 and held == 2

    await _eventually(settled, 60, "4 tasks charged, 2 held by the tenant budget")
    async with open_page(f"http://127.0.0.1:{port}/", tmp_path) as devtools:
        deadline = time.monotonic() + 20
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(rows) < 2:
            rows = await _rows(devtools)
            await asyncio.sleep(0.5)
        by_name = {r["name"]: r for r in rows}
        assert set(by_name) == {"all", "tenant"}
        everything = by_name["all"]
        assert everything["spent"] == pytest.approx(100 * 4 * PRICE / 0.2, abs=0.01)  # 50.4 %
        assert everything["width"] == "50.4%"
        assert everything["cls"] == "budget", "under 80 %: no warning"
        assert "0.1008 spent + 0 reserved of 0.2000 USD" in everything["text"]
        tenant = by_name["tenant"]
        assert tenant["used"] == pytest.approx(84.0)  # acme: 0.0504 of 0.06
        assert "warn" in tenant["cls"]
        assert "fullest of 1 (metadata.tenant)" in tenant["text"]
        assert "2 held here" in tenant["text"]
        page = await devtools.evaluate("document.documentElement.outerHTML")
        assert "acme-corp" not in page, "no metadata value on the page"

        chart: list[float] = json.loads(await devtools.evaluate(CHART_JS))
        assert len(chart) == 60, "one bar a minute"
        assert sum(chart) == pytest.approx(4 * PRICE), "the last hour's spend, drawn by the page"
        external = await devtools.evaluate(
            "[...document.querySelectorAll('script[src],link[href],img[src]')].length"
        )
        assert external == 0, "no external assets"
        shot = await devtools.call("Page.captureScreenshot", format="png")
        (tmp_path / "budgets.png").write_bytes(base64.b64decode(shot["data"]))
        print(f"\nstatus page with budgets: {tmp_path / 'budgets.png'}")
