"""The status page in headless Chromium, as a person would see it: it loads, shows the numbers the
metrics show, updates without a reload, and shows no prompts or secrets (issue #5).

Chromium (Debian's package, installed by .ci/run) is driven over the DevTools protocol with
aiohttp's websocket client.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.observability import (
    SECRET_PROMPT_MARKER,
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
from tests.support.webhooks import OLD_SECRET

pytestmark = pytest.mark.integration

TOKEN = "page-token-7f3a"
PAGE_IDS = ("consumed", "submitted", "succeeded", "failed", "rejected", "spend_actual")
METRIC_OF = {
    "consumed": ("relay_records_consumed_total", {}),
    "submitted": ("relay_tasks_submitted_total", {}),
    "succeeded": ("relay_tasks_terminal_total", {"status": "succeeded"}),
    "failed": ("relay_tasks_terminal_total", {"status": "failed"}),
    "rejected": ("relay_tasks_terminal_total", {"status": "rejected"}),
    "spend_actual": ("relay_cost_actual_usd_total", {}),
}


@pytest.fixture
def sim_args() -> list[str]:
    return VARIED_SIM_ARGS


class DevTools:
    """The few DevTools protocol calls a page test needs."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self._ws.receive_json(), 30)
            if message.get("id") == ident:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer["result"].get("value")

    async def page_numbers(self) -> dict[str, float]:
        script = "JSON.stringify(Object.fromEntries(%s.map(i => "
        script += "[i, document.getElementById(i)?.textContent ?? ''])))"
        raw = json.loads(await self.evaluate(script % json.dumps(list(PAGE_IDS))))
        return {k: float(v) if v not in ("–", "") else float("nan") for k, v in raw.items()}


async def _metric_numbers(pipeline: Pipeline, port: int) -> dict[str, float]:
    return {
        name: round(await pipeline.metric(port, metric, **labels), 4)
        for name, (metric, labels) in METRIC_OF.items()
    }


async def _settled(pipeline: Pipeline, port: int, timeout_s: float) -> dict[str, float]:
    """Metrics once nothing is in flight and they stopped moving."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, float] = {}
    while time.monotonic() < deadline:
        now = await _metric_numbers(pipeline, port)
        idle = await pipeline.metric(port, "relay_tasks_in_flight") == 0
        if idle and now == last:
            return now
        last = now
        await asyncio.sleep(1.0)
    raise AssertionError("the relay did not settle")


async def _page_shows(devtools: DevTools, want: dict[str, float], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    seen: dict[str, float] = {}
    while time.monotonic() < deadline:
        seen = await devtools.page_numbers()
        if all(abs(seen[k] - v) < 1e-6 for k, v in want.items()):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"page shows {seen}, metrics say {want}")


async def test_status_page_in_headless_chromium(
    pipeline: Pipeline, topics: TopicFactory, unique: str, tmp_path: Path
) -> None:
    chromium_bin = require_tool("chromium", "chromium")
    loaded = await start_loaded_relay(pipeline, topics, unique, RELAY_HTTP_TOKEN=TOKEN)
    page_url = f"http://127.0.0.1:{loaded.port}/?token={TOKEN}"
    status, _ = await pipeline.relay_get(loaded.port, "/")
    assert status == 401, "without the token the page is refused"
    await produce_varied_load(pipeline, unique, rounds=8)
    before = await _settled(pipeline, loaded.port, 60.0)

    cdp_port = free_port()
    chromium = ManagedProcess(
        "chromium",
        [
            chromium_bin,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chrome-profile'}",
            "--remote-debugging-address=127.0.0.1",
            f"--remote-debugging-port={cdp_port}",
            "--window-size=1280,1000",
            "about:blank",
        ],
        tmp_path,
    )
    chromium.start()
    try:
        await wait_for_port("127.0.0.1", cdp_port, 30.0, chromium)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{cdp_port}/json/list") as resp:
                targets = await resp.json(content_type=None)
            page = next(t for t in targets if t["type"] == "page")
            async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                devtools = DevTools(ws)
                await devtools.call("Page.navigate", url=page_url)
                await _page_shows(devtools, before, 20.0)
                assert await devtools.evaluate("document.getElementById('ready').textContent") in (
                    "ready",
                    "not ready",
                )
                rows = await devtools.evaluate("document.querySelectorAll('#recent tr').length")
                assert rows > 0, "recent results are listed"

                # More work arrives; the open page catches up without a reload.
                await produce_varied_load(pipeline, "more" + unique, rounds=4)
                after = await _settled(pipeline, loaded.port, 60.0)
                assert after["succeeded"] + after["failed"] > before["succeeded"] + before["failed"]
                await _page_shows(devtools, after, 20.0)

                text = await devtools.evaluate("document.documentElement.outerHTML")
                for secret in (SECRET_PROMPT_MARKER, OLD_SECRET, "mv_test_e2e"):
                    assert secret not in text
                shot = await devtools.call("Page.captureScreenshot", format="png")
                (tmp_path / "status-page.png").write_bytes(base64.b64decode(shot["data"]))
                print(f"\nstatus page screenshot: {tmp_path / 'status-page.png'}")
    finally:
        chromium.stop()
        await loaded.receiver.stop()
