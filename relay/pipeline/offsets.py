"""Which offsets may be committed: only those below the lowest unfinished record, per partition.

Records of one partition finish out of order (tasks take seconds to minutes), so the commit
position is the lowest offset still in progress, or one past the highest finished when nothing is
in progress (the Confluent Parallel Consumer rule).
"""

from __future__ import annotations

import asyncio
import heapq


class PartitionWork:
    """The records of one partition that this process has taken and not yet finished."""

    def __init__(self) -> None:
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._heap: list[int] = []
        self._next_offset: int | None = None
        self.committed: int | None = None

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, offset: int, task: asyncio.Task[None]) -> None:
        self.tasks[offset] = task
        heapq.heappush(self._heap, offset)
        if self._next_offset is None or offset >= self._next_offset:
            self._next_offset = offset + 1

    @property
    def next_offset(self) -> int | None:
        """One past the highest offset taken, if any was: where fetching goes on from."""
        return self._next_offset

    def done(self, offset: int) -> None:
        self.tasks.pop(offset, None)

    def position(self) -> int | None:
        """The first offset not yet finished (what a restart would read first), if known."""
        while self._heap and self._heap[0] not in self.tasks:
            heapq.heappop(self._heap)
        if self._heap:
            return self._heap[0]
        return self._next_offset if self._next_offset is not None else self.committed

    def committable(self) -> int | None:
        """The offset to commit (the next record to read after a restart), if it moved."""
        while self._heap and self._heap[0] not in self.tasks:
            heapq.heappop(self._heap)
        position = self._heap[0] if self._heap else self._next_offset
        if position is None or (self.committed is not None and position <= self.committed):
            return None
        return position
