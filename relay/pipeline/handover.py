"""Stopping work without a second submit: a task is never cut between a submit and its record.

When a partition is revoked or the relay shuts down, the work on it stops and the next owner
resumes from Redis. A task cancelled while its ``POST /tasks`` is in flight would leave a task on
MindVideo that Redis does not know of; the next owner would submit again (MindVideo's own
idempotency makes that free, but it is a second submit). So:

- ``stop(task)`` cancels at once, unless the task is inside a submit section, in which case it
  ends right after the section;
- ``freeze(tasks)`` (on revocation, before the group rebalances) lets no frozen task enter a submit
  section and returns once none is inside one; ``thaw(tasks)`` lets them go on when their partition
  comes back, ``stop`` ends them when it went elsewhere;
- ``parked()`` marks where a task waits for something only the operator can fix (the credentials
  gate). A parked task is outside any submit section, so on shutdown ``hand_back_parked()`` ends
  it at once, and every task that parks after it: there is no point in waiting out the grace
  period for work that cannot move, and the next owner resumes it from Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

Task = asyncio.Task[object]


class Handover:
    def __init__(self) -> None:
        self._inside: set[Task] = set()
        self._doomed: set[Task] = set()
        self._frozen: set[Task] = set()
        self._parked: set[Task] = set()
        self._handing_back = False
        self._changed = asyncio.Event()

    @asynccontextmanager
    async def submit_section(self) -> AsyncIterator[None]:
        """Run a submit and the write that records it as one piece."""
        task = asyncio.current_task()
        assert task is not None
        self.check(task)
        while task in self._frozen:
            await self._wait_change()
            self.check(task)
        self._inside.add(task)
        try:
            yield
        finally:
            self._inside.discard(task)
            self._notify()
        self.check(task)

    @asynccontextmanager
    async def parked(self) -> AsyncIterator[None]:
        """Wait inside this block for something that may never come before shutdown."""
        task = asyncio.current_task()
        assert task is not None
        self.check(task)
        if self._handing_back:
            raise asyncio.CancelledError
        self._parked.add(task)
        try:
            yield
        finally:
            self._parked.discard(task)

    def hand_back_parked(self) -> int:
        """End every parked task now and every task that parks from now on; how many now."""
        self._handing_back = True
        parked = [t for t in self._parked if not t.done()]
        for task in parked:
            task.cancel()
        return len(parked)

    def check(self, task: Task | None = None) -> None:
        """Raise ``CancelledError`` if the current task was asked to stop."""
        task = task or asyncio.current_task()
        if task is not None and task in self._doomed:
            raise asyncio.CancelledError

    async def sleep(self, delay_s: float) -> None:
        """``asyncio.sleep`` that a stopped task leaves at once, even inside a submit section:
        a retry not yet sent is safe to abandon (the next owner submits with the same key)."""
        self.check()
        await asyncio.sleep(delay_s)
        self.check()

    async def freeze(self, tasks: Iterable[Task], timeout_s: float) -> None:
        """Keep ``tasks`` out of submit sections; wait (bounded) for those inside to leave."""
        frozen = {t for t in tasks if not t.done()}
        self._frozen |= frozen
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._inside & frozen and loop.time() < deadline:
            try:
                await asyncio.wait_for(self._wait_change(), deadline - loop.time())
            except TimeoutError:
                break

    def thaw(self, tasks: Iterable[Task]) -> None:
        self._frozen.difference_update(tasks)
        self._notify()

    def stop(self, task: Task) -> None:
        """Cancel ``task`` now, or as soon as it leaves its submit section."""
        self._frozen.discard(task)
        if task.done():
            return
        if task in self._inside:
            self._doomed.add(task)
            task.add_done_callback(self._forget)
        else:
            task.cancel()

    def _forget(self, task: Task) -> None:
        self._doomed.discard(task)

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
