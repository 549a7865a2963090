"""In-memory fakes of the relay's own pipeline components, for unit tests that need no service.

Each fake subclasses the real component and replaces its I/O with a dict or a list, keeping the
real semantics the lifecycle depends on (forward-only key states, conflicts, markers). A test
scripts failures by queueing exceptions: ``fake.errors["claim"].append(RedisError("down"))``
makes the next claim raise it.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from relay.backoff import Backoff
from relay.metrics import RelayMetrics
from relay.models import ResultRecord, TaskSnapshot
from relay.pipeline.consumer import SourceRecord
from relay.pipeline.follower import OnEventId, TaskFollower
from relay.pipeline.gate import CredentialGate
from relay.pipeline.handover import Handover
from relay.pipeline.idempotency import (
    Claim,
    IdempotencyRecord,
    IdempotencyStore,
    KeyState,
    PublishTurn,
    RefusalStatus,
)
from relay.pipeline.mindvideo import MindVideoClient
from relay.pipeline.outcomes import OutcomeRecorder
from relay.pipeline.processor import RequestProcessor
from relay.pipeline.publisher import ResultPublisher
from relay.pipeline.steps import RequestSteps
from relay.retry import RetryPolicy
from relay.spend.guard import BudgetGuard
from relay.status import RecentResults
from relay.tracing.context import TraceContext
from relay.tracing.spans import NO_TRACING, Tracing

MODEL = "apimart-doubao-seedance-4-0"
Errors = defaultdict[str, list[BaseException]]


def _raise_next(errors: Errors, operation: str) -> None:
    if errors[operation]:
        raise errors[operation].pop(0)


class FakeStore(IdempotencyStore):
    """Idempotency records in a dict of hashes, as Redis would hold them."""

    def __init__(self) -> None:  # no Redis: nothing of the parent is used
        self.hashes: dict[str, dict[str, str]] = {}
        self.errors: Errors = defaultdict(list)

    async def claim(
        self,
        idempotency_key: str,
        fingerprint: str,
        model: str,
        now: str,
        *,
        metadata_json: str = "null",
        webhook_url: str | None = None,
    ) -> Claim:
        _raise_next(self.errors, "claim")
        fields = self.hashes.setdefault(idempotency_key, {})
        fp = fields.get("fp")
        if fp is None or (fp != fingerprint and fields.get("state") == KeyState.REJECTED):
            self.hashes[idempotency_key] = {"fp": fingerprint, "state": KeyState.CLAIMED}
            return Claim("new")
        if fp != fingerprint:
            return Claim("conflict")
        return Claim("existing", self.record(idempotency_key))

    def record(self, idempotency_key: str) -> IdempotencyRecord:
        f = self.hashes[idempotency_key]
        result = f.get("result")
        return IdempotencyRecord(
            state=KeyState(f.get("state", KeyState.CLAIMED)),
            task_id=f.get("task_id"),
            request_id=f.get("request_id"),
            last_event_id=f.get("last_event_id"),
            cost_estimate=float(f["cost_estimate"]) if "cost_estimate" in f else None,
            submitted_at=f.get("submitted_at"),
            result=ResultRecord.model_validate_json(result) if result else None,
        )

    async def mark_submitted(
        self,
        idempotency_key: str,
        *,
        task_id: str,
        request_id: str | None,
        cost_estimate: float | None,
        submitted_at: str,
    ) -> bool:
        _raise_next(self.errors, "mark_submitted")
        fields = self.hashes[idempotency_key]
        if fields.get("state", KeyState.CLAIMED) != KeyState.CLAIMED:
            return False
        fields.update(state=KeyState.SUBMITTED, task_id=task_id, submitted_at=submitted_at)
        if request_id is not None:
            fields["request_id"] = request_id
        if cost_estimate is not None:
            fields["cost_estimate"] = repr(cost_estimate)
        return True

    async def mark_event(self, idempotency_key: str, last_event_id: str) -> None:
        self.hashes[idempotency_key]["last_event_id"] = last_event_id

    async def take_publish(
        self, idempotency_key: str, result_json: bytes, token: str, lease_s: int
    ) -> PublishTurn:
        _raise_next(self.errors, "take_publish")
        fields = self.hashes[idempotency_key]
        if fields.get("state") in (KeyState.PUBLISHED, KeyState.REJECTED):
            return PublishTurn("done")
        if fields.get("state") != KeyState.TERMINAL:
            fields.update(state=KeyState.TERMINAL, result=result_json.decode())
        if fields.setdefault("pub", token) != token:
            return PublishTurn("busy")
        return PublishTurn("won", fields["result"].encode())

    async def mark_published(
        self, idempotency_key: str, result: ResultRecord, fingerprint: str | None = None
    ) -> None:
        _raise_next(self.errors, "mark_published")
        self.hashes[idempotency_key]["state"] = KeyState.PUBLISHED

    async def mark_rejected(
        self, idempotency_key: str, result: ResultRecord, fingerprint: str | None = None
    ) -> None:
        self.hashes[idempotency_key].update(
            state=KeyState.REJECTED, result=result.model_dump_json()
        )

    async def first_time(self, idempotency_key: str, marker: str) -> bool:
        fields = self.hashes.setdefault(idempotency_key, {})
        added = f"seen:{marker}" not in fields
        fields[f"seen:{marker}"] = "1"
        return added

    async def take_once(
        self, idempotency_key: str, marker: str, token: str, lease_s: int
    ) -> Literal["won", "busy", "done"]:
        fields = self.hashes.setdefault(idempotency_key, {})
        if f"seen:{marker}" in fields:
            return "done"
        return "won" if fields.setdefault(f"lease:seen:{marker}", token) == token else "busy"

    async def seen(self, idempotency_key: str, marker: str) -> bool:
        return f"seen:{marker}" in self.hashes.get(idempotency_key, {})

    async def refusal_status(self, idempotency_key: str, marker: str) -> RefusalStatus:
        _raise_next(self.errors, "refusal_status")
        fields = self.hashes.get(idempotency_key, {})
        if fields.get("state") in (
            KeyState.CLAIMED,
            KeyState.SUBMITTED,
            KeyState.TERMINAL,
            KeyState.PUBLISHED,
        ):
            return "in_use"
        return "seen" if f"seen:{marker}" in fields else "new"


class FakeMindVideo(MindVideoClient):
    """Creates tasks (once per idempotency key, like MindVideo) and remembers every charge.

    A submit of a key it knows answers as a replay (``Idempotent-Replayed``); ``before`` runs at
    the start of every submit (a test's hook: advance a clock, change the store)."""

    def __init__(self) -> None:  # no HTTP session
        self.tasks: dict[str, str] = {}
        self.submits: list[str] = []
        self.errors: Errors = defaultdict(list)
        self.before: Callable[[], None] | None = None
        self.cost_estimate: float | None = 0.0252

    async def submit(
        self, idempotency_key: str, model: str, payload: dict[str, Any]
    ) -> TaskSnapshot:
        self.submits.append(idempotency_key)
        if self.before is not None:
            self.before()
        _raise_next(self.errors, "submit")
        replayed = idempotency_key in self.tasks
        task_id = self.tasks.setdefault(idempotency_key, f"task_{len(self.tasks) + 1}")
        return TaskSnapshot(
            task_id=task_id,
            request_id="req_1",
            status="queued",
            cost_estimate=self.cost_estimate,
            idempotent_replayed=replayed,
        )


@dataclass
class FollowCall:
    task_id: str
    last_event_id: str | None
    timeout_s: float | None


class FakeFollower(TaskFollower):
    """Ends every task as ``status`` (after the scripted errors), reporting one event id."""

    def __init__(self, status: str = "succeeded") -> None:  # no client, no pacing
        self.status = status
        self.calls: list[FollowCall] = []
        self.errors: Errors = defaultdict(list)
        self.before: Callable[[], Awaitable[None]] | None = None

    async def follow(
        self,
        task_id: str,
        last_event_id: str | None,
        on_event_id: OnEventId,
        *,
        timeout_s: float | None = None,
    ) -> TaskSnapshot:
        self.calls.append(FollowCall(task_id, last_event_id, timeout_s))
        if self.before is not None:
            await self.before()
        _raise_next(self.errors, "follow")
        await on_event_id("3")
        output = {"images": [{"url": "https://x/1.png"}]} if self.status == "succeeded" else None
        return TaskSnapshot(task_id=task_id, status=self.status, cost_actual=0.0252, output=output)


@dataclass
class DeadLetterCopy:
    reason: str
    message: str
    value: bytes | None
    key: bytes | None
    headers: dict[str, str]


class FakePublisher(ResultPublisher):
    """Keeps what would go to the results and dead-letter topics."""

    def __init__(self, metrics: RelayMetrics) -> None:  # no producer
        self._metrics = metrics
        self.results: list[tuple[ResultRecord, str | None]] = []
        self.traces: list[TraceContext | None] = []  # beside each result
        self.dead_letters: list[DeadLetterCopy] = []
        self.errors: Errors = defaultdict(list)
        self.before: Callable[[], Awaitable[None]] | None = None  # run as a publish starts

    async def publish(
        self,
        result: ResultRecord,
        *,
        webhook_url: str | None = None,
        body: bytes | None = None,
        trace: TraceContext | None = None,
    ) -> None:
        _raise_next(self.errors, "publish")
        if self.before is not None:
            await self.before()
        self.results.append((result, webhook_url))
        self.traces.append(trace)

    async def dead_letter(
        self,
        source: SourceRecord,
        reason: str,
        message: str,
        *,
        value: bytes | None,
        extra_headers: Any = (),
    ) -> None:
        _raise_next(self.errors, "dead_letter")
        headers = dict(extra_headers)
        self.dead_letters.append(DeadLetterCopy(reason, message, value, source.key, headers))
        self._metrics.dead_lettered.labels(reason).inc()


@dataclass
class Harness:
    """The real dispatcher and steps over the fakes above."""

    max_attempts: int = 3
    task_timeout_s: float = 3600.0
    wall_clock: Callable[[], float] | None = None
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    store: FakeStore = field(default_factory=FakeStore)
    client: FakeMindVideo = field(default_factory=FakeMindVideo)
    follower: FakeFollower = field(default_factory=FakeFollower)
    gate: CredentialGate = field(default_factory=CredentialGate)
    handover: Handover = field(default_factory=Handover)
    sleeps: list[float] = field(default_factory=list)
    tracing: Tracing = NO_TRACING
    budget: BudgetGuard | None = None

    def __post_init__(self) -> None:
        self.publisher = FakePublisher(self.metrics)
        wall_clock: Callable[[], float] = self.wall_clock or time.time
        steps = RequestSteps(
            store=self.store,
            client=self.client,
            follower=self.follower,
            publisher=self.publisher,
            outcomes=OutcomeRecorder(self.metrics, RecentResults()),
            handover=self.handover,
            max_record_bytes=64 * 1024,
            max_metadata_bytes=1024,
            task_timeout_s=self.task_timeout_s,
            wall_clock=wall_clock,
            tracing=self.tracing,
            budget=self.budget,
        )
        self.processor = RequestProcessor(
            steps,
            gate=self.gate,
            handover=self.handover,
            budget=self.budget,
            wall_clock=wall_clock,
            retry=RetryPolicy(
                Backoff(0.5, 30.0, random.Random(1)),
                self.metrics.retries,
                scope="lifecycle",
                max_attempts=self.max_attempts,
                outages_unbounded=True,
                sleep=self._sleep,
            ),
            tracing=self.tracing,
        )

    async def _sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def request(key: str, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": {"prompt": f"prompt of {key}"}, **fields}


def source(key: str | None, value: bytes | dict[str, Any] | None, offset: int = 0) -> SourceRecord:
    raw = json.dumps(value).encode() if isinstance(value, dict) else value
    return SourceRecord(
        topic="requests",
        partition=0,
        offset=offset,
        key=None if key is None else key.encode(),
        value=raw,
        timestamp_ms=0,
    )
