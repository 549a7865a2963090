"""A task is never cut between its submit and the record of it; frozen tasks start no submit."""

from __future__ import annotations

import asyncio

import pytest

from relay.pipeline.handover import Handover


async def _submitting(handover: Handover, log: list[str], hold: asyncio.Event) -> None:
    async with handover.submit_section():
        log.append("submit sent")
        await hold.wait()
        log.append("submit recorded")
    log.append("after section")


async def test_stop_outside_a_section_cancels_at_once() -> None:
    handover = Handover()
    task = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    handover.stop(task)
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_stop_inside_a_section_waits_for_the_record() -> None:
    handover, hold = Handover(), asyncio.Event()
    log: list[str] = []
    task = asyncio.create_task(_submitting(handover, log, hold))
    await asyncio.sleep(0.01)
    handover.stop(task)
    await asyncio.sleep(0.01)
    assert not task.done(), "still inside the submit section"
    hold.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["submit sent", "submit recorded"], "ended right after the section"


async def test_frozen_tasks_start_no_submit_until_thawed() -> None:
    handover, hold = Handover(), asyncio.Event()
    log: list[str] = []
    hold.set()
    gate = asyncio.Event()

    async def later() -> None:
        await gate.wait()
        await _submitting(handover, log, hold)

    task = asyncio.create_task(later())
    await handover.freeze([task], timeout_s=1.0)
    gate.set()
    await asyncio.sleep(0.05)
    assert log == [], "a frozen task does not enter a submit section"
    handover.thaw([task])
    await asyncio.wait_for(task, 1.0)
    assert log == ["submit sent", "submit recorded", "after section"]


async def test_freeze_waits_for_a_submit_in_flight() -> None:
    handover, hold = Handover(), asyncio.Event()
    log: list[str] = []
    task = asyncio.create_task(_submitting(handover, log, hold))
    await asyncio.sleep(0.01)
    freezing = asyncio.create_task(handover.freeze([task], timeout_s=5.0))
    await asyncio.sleep(0.05)
    assert not freezing.done(), "freeze waits until the submit is recorded"
    hold.set()
    await asyncio.wait_for(freezing, 1.0)
    assert "submit recorded" in log
    await task
