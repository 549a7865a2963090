"""The credentials gate: closed while MindVideo refuses the key, said once in the log, and open
again when the probe succeeds."""

from __future__ import annotations

import asyncio
import logging

import pytest

from relay.exceptions import OperatorError
from relay.pipeline.gate import CredentialGate


async def test_closing_and_reopening(caplog: pytest.LogCaptureFixture) -> None:
    gate = CredentialGate()
    assert gate.is_open
    assert gate.reason is None
    assert await gate.wait_open_for(0.01)
    closed = asyncio.create_task(gate.wait_closed())
    await asyncio.sleep(0)
    assert not closed.done()

    with caplog.at_level(logging.WARNING, logger="relay.pipeline.gate"):
        gate.close(OperatorError(401, "invalid api key"))
        gate.close(OperatorError(402, "out of credit"))
        await asyncio.wait_for(closed, 1.0)
        assert not gate.is_open
        assert gate.reason == "MindVideo answered 402: out of credit", "the latest reason"
        assert not await gate.wait_open_for(0.01)

        waiting = asyncio.create_task(gate.wait_open_for(5.0))
        await asyncio.sleep(0)
        gate.reopen()
        gate.reopen()
        assert await asyncio.wait_for(waiting, 1.0)
    assert gate.is_open
    assert gate.reason is None
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "MindVideo refused the operator's credentials; pausing all work",
        "MindVideo accepts the credentials again; resuming work",
    ], "each change is logged once"


async def test_a_long_message_is_cut_in_the_reason() -> None:
    gate = CredentialGate()
    gate.close(OperatorError(403, "x" * 1000))
    assert gate.reason is not None
    assert len(gate.reason) < 250
