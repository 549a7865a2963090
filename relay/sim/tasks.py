"""Tasks and their lazy timeline: status is computed from the clock, never driven by timers.

A task's whole future is drawn when it is created (how long it queues, how long it processes,
whether it fails), so its status at any moment is a pure function of the clock. That is what lets
the simulator hold tens of thousands of tasks in flight at no cost. Only a cancel changes the plan.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from relay.models import TERMINAL_STATUSES
from relay.sim.images import image_path
from relay.sim.ledger import actual_cost
from relay.sim.wire import OutputImage, TaskError, TaskOutput, TaskSnapshotBody, iso_ts

Outcome = Literal["succeeded", "failed"]
STATUSES = ("queued", "processing", "succeeded", "failed", "cancelled")
FAILURE_MESSAGE = "the model could not generate this image (simulated failure)"


def new_id(prefix: str) -> str:
    """A fresh opaque id (not from the seeded stream: ids must not repeat across restarts)."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class TaskEvent:
    """One status change: ``seq`` is the SSE ``id`` (1, 2, 3… per task)."""

    seq: int
    status: str
    at_s: float

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class Task:
    """A task as the simulator knows it; ``created_at_s`` and the plan fix its whole timeline."""

    task_id: str
    request_id: str
    api_key: str
    model: str
    n: int
    cost_estimate_usd: Decimal
    idempotency_key: str | None
    fingerprint: str
    created_at_s: float
    queued_s: float
    processing_s: float
    outcome: Outcome
    cancelled_at_s: float | None = None

    def timeline(self) -> list[TaskEvent]:
        """Every status change, past and planned, cut short by a cancel."""
        planned = [
            ("queued", self.created_at_s),
            ("processing", self.created_at_s + self.queued_s),
            (self.outcome, self.created_at_s + self.queued_s + self.processing_s),
        ]
        if self.cancelled_at_s is not None:
            cut = self.cancelled_at_s
            planned = [(s, at) for s, at in planned if at <= cut and s not in TERMINAL_STATUSES]
            planned.append(("cancelled", cut))
        return [TaskEvent(seq, status, at) for seq, (status, at) in enumerate(planned, start=1)]

    def events(self, now_s: float) -> list[TaskEvent]:
        """The status changes that have happened by ``now_s``."""
        return [event for event in self.timeline() if event.at_s <= now_s]

    def current(self, now_s: float) -> TaskEvent:
        """The latest status change by ``now_s``: the task's state then."""
        past = self.events(now_s)
        return past[-1] if past else self.timeline()[0]

    def status(self, now_s: float) -> str:
        """The task's normalized status at ``now_s``."""
        return self.current(now_s).status

    def next_change_at(self, now_s: float) -> float | None:
        """When the next status change is due, or ``None`` if the task is terminal."""
        upcoming = [event.at_s for event in self.timeline() if event.at_s > now_s]
        return upcoming[0] if upcoming else None

    def snapshot(self, event: TaskEvent, base_url: str) -> TaskSnapshotBody:
        """The task as it stood right after ``event``."""
        cost_actual = actual_cost(self.cost_estimate_usd, event.status)
        output = None
        if event.status == "succeeded":
            urls = [f"{base_url}{image_path(self.task_id, i)}" for i in range(self.n)]
            output = TaskOutput(images=[OutputImage(url=url) for url in urls])
        error = None
        if event.status == "failed":
            error = TaskError(code="generation_failed", message=FAILURE_MESSAGE)
        return TaskSnapshotBody(
            request_id=self.request_id,
            task_id=self.task_id,
            model=self.model,
            status=event.status,
            cost_estimate=float(self.cost_estimate_usd),
            cost_actual=None if cost_actual is None else float(cost_actual),
            output=output,
            error=error,
            created_at=iso_ts(self.created_at_s),
            updated_at=iso_ts(event.at_s),
        )


@dataclass
class TaskStore:
    """All tasks, the idempotency index (per API key) and the wake-ups of open event streams."""

    tasks: dict[str, Task] = field(default_factory=dict)
    _by_idempotency: dict[tuple[str, str], str] = field(default_factory=dict)
    _listeners: dict[str, set[asyncio.Event]] = field(default_factory=dict)

    def add(self, task: Task) -> None:
        """Keep a new task and index it under its API key and idempotency key."""
        self.tasks[task.task_id] = task
        if task.idempotency_key is not None:
            self._by_idempotency[(task.api_key, task.idempotency_key)] = task.task_id

    def get(self, api_key: str, task_id: str) -> Task | None:
        """The task if ``api_key`` created it: other keys cannot see it."""
        task = self.tasks.get(task_id)
        return task if task is not None and task.api_key == api_key else None

    def by_idempotency_key(self, api_key: str, idempotency_key: str) -> Task | None:
        """The task created under this key by this API key, if any."""
        task_id = self._by_idempotency.get((api_key, idempotency_key))
        return None if task_id is None else self.tasks.get(task_id)

    def cancel(self, task: Task, now_s: float) -> bool:
        """Cancel now unless already terminal; wakes every stream following the task."""
        if task.current(now_s).terminal:
            return False
        task.cancelled_at_s = now_s
        for wake in self._listeners.get(task.task_id, ()):
            wake.set()
        return True

    def forget(self, task_id: str) -> bool:
        """Forget one task as a purge would: 404 from now on, its idempotency key free again,
        and every stream following it ends (without a terminal event)."""
        task = self.tasks.pop(task_id, None)
        if task is None:
            return False
        if task.idempotency_key is not None:
            self._by_idempotency.pop((task.api_key, task.idempotency_key), None)
        for wake in self._listeners.get(task_id, ()):
            wake.set()
        return True

    def knows(self, task: Task) -> bool:
        """Whether ``task`` is still one of the store's (not forgotten or cleared)."""
        return self.tasks.get(task.task_id) is task

    def listen(self, task_id: str) -> asyncio.Event:
        """An event set when the task changes out of plan; only open streams hold one."""
        wake = asyncio.Event()
        self._listeners.setdefault(task_id, set()).add(wake)
        return wake

    def unlisten(self, task_id: str, wake: asyncio.Event) -> None:
        """Release a stream's wake-up; the entry goes once the last stream leaves."""
        listeners = self._listeners.get(task_id)
        if listeners is not None:
            listeners.discard(wake)
            if not listeners:
                del self._listeners[task_id]

    def count_by_status(self, now_s: float) -> dict[str, int]:
        """How many tasks are in each status now (every status present, zero or not)."""
        counts = dict.fromkeys(STATUSES, 0)
        for task in self.tasks.values():
            counts[task.status(now_s)] += 1
        return counts

    def clear(self) -> None:
        """Forget tasks and idempotency keys; open streams keep following their task object."""
        self.tasks.clear()
        self._by_idempotency.clear()

    def open_streams(self) -> int:
        """Event streams currently following a task."""
        return sum(len(listeners) for listeners in self._listeners.values())
