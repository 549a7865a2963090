"""Commits never run ahead of unfinished work (the lowest-unfinished-offset rule)."""

from __future__ import annotations

import asyncio

from relay.pipeline.offsets import PartitionWork


async def _idle() -> None:
    await asyncio.sleep(0)


async def test_commit_position_is_lowest_unfinished() -> None:
    work = PartitionWork()
    tasks = {o: asyncio.create_task(_idle()) for o in (10, 11, 12, 13)}
    for offset, task in tasks.items():
        work.add(offset, task)
    assert work.committable() == 10
    work.done(11)
    work.done(12)
    assert work.committable() == 10, "11 and 12 are done but 10 is not: nothing past 10 commits"
    work.done(10)
    assert work.committable() == 13
    work.committed = 13
    assert work.committable() is None, "no new position: nothing to commit"
    work.done(13)
    assert work.committable() == 14
    await asyncio.gather(*tasks.values())


async def test_empty_partition_has_nothing_to_commit() -> None:
    assert PartitionWork().committable() is None
