"""Headless Chromium on a page, driven over the DevTools protocol (Debian's ``chromium``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.support.services import ManagedProcess, free_port, require_tool, wait_for_port
from tests.test_status_page import DevTools

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--window-size=1280,1400",
)


@asynccontextmanager
async def open_page(url: str, workdir: Path) -> AsyncIterator[DevTools]:
    """Chromium showing ``url``; the DevTools session to ask it things."""
    binary = require_tool("chromium", "chromium")
    cdp_port = free_port()
    chromium = ManagedProcess(
        "chromium",
        [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={workdir / 'chrome-profile'}",
            f"--remote-debugging-port={cdp_port}",
            "about:blank",
        ],
        workdir,
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
                await devtools.call("Page.navigate", url=url)
                yield devtools
    finally:
        chromium.stop()
