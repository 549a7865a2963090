"""Stopping work without losing a charge: a task is never cut between a submit and its record.

When a partition is revoked or the relay shuts down, the work on it stops and the next owner
resumes from Redis. A task cancelled while its ``POST /tasks`` is in flight would leave a task on
MindVideo that Redis does not know of; the next owner would submit again (MindVideo's own
idempotency makes that free, but it is a second submit). ``Handover.stop(task)`` therefore cancels
at once, unless the task is inside a submit section, in which case it ends right after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Handover:
    def __init__(self) -> None:
        self._inside: set[asyncio.Task[object]] = set()
        self._doomed: set[asyncio.Task[object]] = set()

    @asynccontextmanager
    async def submit_section(self) -> AsyncIterator[None]:
        """Run a submit and the write that records it as one piece."""
        task = asyncio.current_task()
        assert task is not None
        self.check(task)
        self._inside.add(task)
        try:
            yield
        finally:
            self._inside.discard(task)
        self.check(task)

    def check(self, task: asyncio.Task[object] | None = None) -> None:
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

    def stop(self, task: asyncio.Task[object]) -> None:
        """Cancel ``task`` now, or as soon as it leaves its submit section."""
        if task.done():
            return
        if task in self._inside:
            self._doomed.add(task)
            task.add_done_callback(self._forget)
        else:
            task.cancel()

    def _forget(self, task: asyncio.Task[object]) -> None:
        self._doomed.discard(task)
