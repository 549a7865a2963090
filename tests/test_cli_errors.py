"""A CLI failure to reach MindVideo names the variable to check (attack-b report: ``relay
reconcile`` printed the client's RetryableError, whose aiohttp cause it did not look at)."""

from __future__ import annotations

import aiohttp
import pytest

from relay.backoff import Backoff
from relay.cli import _one_line
from relay.devtools.processes import free_port
from relay.exceptions import RetryableError
from relay.metrics import RelayMetrics
from relay.pipeline.mindvideo import MindVideoClient
from relay.settings import RelaySettings


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "mindvideo.invalid"])
async def test_an_unreachable_mindvideo_names_its_base_url(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url = f"http://{host.format(port=free_port())}"  # refused, or a name DNS cannot resolve
    monkeypatch.setenv("RELAY_MINDVIDEO_BASE_URL", base_url)
    settings = RelaySettings()
    async with aiohttp.ClientSession() as session:
        client = MindVideoClient(
            session,
            base_url=base_url,
            api_key="mv_test_x",
            metrics=RelayMetrics(),
            backoff=Backoff(0.01, 0.02),
            max_attempts=1,
            request_timeout_s=3.0,
        )
        with pytest.raises(RetryableError) as raised:
            await client.get_task("task_1")
    assert isinstance(raised.value.__cause__, aiohttp.ClientError | TimeoutError)
    line = _one_line(raised.value, settings)
    assert line.endswith(f"; check RELAY_MINDVIDEO_BASE_URL ({base_url})"), line
    assert "\n" not in line
