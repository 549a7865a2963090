"""The dispatcher: runs one record through the lifecycle's stages and carries out what the
lifecycle table says about every error (DESIGN §1, §3–§5).

It decides nothing itself: ``relay.pipeline.steps`` does the work of each stage and
``relay.pipeline.lifecycle.TABLE`` says what an error leads to. ``process`` returns once the
record is done with, whatever happened, so no record can hold its partition's commits: outages are
waited out (a request held by one is never rejected: a submit that timed out may have been
charged), credential problems close the gate, a spend budget at its cap holds the request, and
anything unexpected is tried again a bounded number of times and then dead-lettered as
``internal_error``. Only a handover (cancellation) ends it early, leaving the record to the next
owner. A request with ``expires_at`` that has not been submitted stops waiting (an outage, the
gate, a budget) at that moment; its step then rejects it as ``expired``.

Traced (``relay.tracing``), a record is one ``consume`` span, a child of the producer's
``traceparent``, and each try of a traced step is a span inside it: a retried step shows as
several, the failed ones marked with their error's class.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from relay.exceptions import BudgetHeld, OperatorError, RequestRejected, RetryableError
from relay.pipeline.consumer import SourceRecord
from relay.pipeline.gate import CredentialGate
from relay.pipeline.handover import Handover
from relay.pipeline.lifecycle import (
    BEFORE_SUBMIT,
    NEEDS_MINDVIDEO,
    Action,
    Outcome,
    Stage,
    Work,
    outcome_for,
)
from relay.pipeline.steps import RequestSteps
from relay.retry import RetryPolicy, is_outage
from relay.spend.guard import BudgetGuard
from relay.tracing.spans import NO_TRACING, Span, Tracing

log = logging.getLogger(__name__)

GATE_CHECK_INTERVAL_S = 1.0
# Steps that get a span of their own (decode is the start of ``consume``; mark a bookkeeping write).
TRACED_STAGES = frozenset({Stage.REFUSE, Stage.CLAIM, Stage.SUBMIT, Stage.FOLLOW, Stage.PUBLISH})


class RequestProcessor:
    """Turns one request record into exactly one result record, or a dead letter."""

    def __init__(
        self,
        steps: RequestSteps,
        *,
        gate: CredentialGate,
        handover: Handover,
        retry: RetryPolicy,
        tracing: Tracing = NO_TRACING,
        budget: BudgetGuard | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``retry``: outages without a bound, anything unexpected up to its ``max_attempts``.
        ``budget``: where a request held at a budget's cap waits (``None``: no budgets)."""
        self._steps = steps
        self._gate = gate
        self._handover = handover
        self._retry = retry
        self._tracing = tracing
        self._budget = budget
        self._wall_clock = wall_clock
        self._key_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def process(self, source: SourceRecord) -> None:
        work = Work(source, raw=source.take_value())
        with self._tracing.consume(
            source.trace, source.topic, source.partition, source.offset
        ) as span:
            stage = await self._advance(Stage.DECODE, work)
            if span.recording:
                span.set("relay.idempotency_key", work.key)
                span.set("relay.model", work.request.model if work.request else None)
            async with self._key_lock(work.key):
                while stage is not Stage.DONE:
                    stage = await self._advance(stage, work)

    async def _advance(self, stage: Stage, work: Work) -> Stage:
        """Run ``stage``'s step until it gives the next stage or the table moves elsewhere."""
        try:
            return await self._run(stage, work)
        finally:
            if work.held_by is not None:  # the request leaves a budget's hold, however it does
                assert self._budget is not None
                assert work.held_since_s is not None
                self._budget.end_hold(work.held_by, work.held_since_s)
                work.held_by, work.held_since_s = None, None

    async def _run(self, stage: Stage, work: Work) -> Stage:
        while True:
            if stage in NEEDS_MINDVIDEO:
                await self._wait_at_gate(self._deadline_s(stage, work))
            try:
                next_stage = await self._run_step(stage, work)
            except Exception as exc:  # noqa: BLE001 (every error is the table's to decide)
                moved = await self._carry_out(stage, outcome_for(stage, exc), work, exc)
                if moved is not None:
                    work.outages = 0
                    return moved
            else:
                work.outages = 0
                return next_stage

    async def _run_step(self, stage: Stage, work: Work) -> Stage:
        """One try of ``stage``'s step, inside its span when the stage is traced."""
        if stage not in TRACED_STAGES:
            return await self._steps.run(stage, work)
        with self._tracing.step(stage.value) as span:
            try:
                return await self._steps.run(stage, work)
            finally:
                if span.recording:
                    _describe(span, work)

    async def _carry_out(
        self, stage: Stage, outcome: Outcome, work: Work, exc: Exception
    ) -> Stage | None:
        """Do what ``outcome`` says; the stage to go to, or ``None`` to run ``stage`` again."""
        context = {"idempotency_key": work.key, "stage": stage.value, "reason": str(exc)[:200]}
        match outcome.action:
            case Action.RETRY:
                work.outages += 1
                # MindVideo unreachable: said once per 30 s by its client's reachability, with a
                # count, rather than once per request held.
                unreachable = isinstance(exc, RetryableError) and exc.reason == "connect"
                log.log(
                    logging.DEBUG if unreachable else logging.WARNING,
                    "dependency unavailable, holding the request",
                    extra=context,
                )
                deadline_s = self._deadline_s(stage, work)
                if deadline_s is None:
                    await self._retry.pause(work.outages, exc)
                else:  # the wait ends at expires_at: the step then rejects the request
                    with suppress(TimeoutError):
                        left_s = max(0.0, deadline_s - self._wall_clock())
                        await asyncio.wait_for(self._retry.pause(work.outages, exc), left_s)
                return None
            case Action.HOLD:
                assert isinstance(exc, BudgetHeld)
                assert self._budget is not None
                if work.held_by is None:  # counted as held from now until it leaves the stage
                    work.held_since_s = self._wall_clock()
                    work.held_by = self._budget.begin_hold(exc, work.held_since_s)
                async with self._handover.parked():  # on shutdown: handed back at once
                    await self._budget.hold(exc, deadline_s=self._deadline_s(stage, work))
                return None
            case Action.CLOSE_GATE:
                assert isinstance(exc, OperatorError)
                self._gate.close(exc)
                return None
            case Action.REJECT:
                assert isinstance(exc, RequestRejected)
                work.reject(exc.code, exc.message)
                return Stage.PUBLISH
            case Action.FAIL:
                log.error(
                    "the task will not end by itself", extra={**context, "code": outcome.code}
                )
                work.fail(outcome.code or "failed", str(exc))
                return Stage.PUBLISH
            case Action.DEAD_LETTER:
                return await self._retry_or_dead_letter(stage, work, exc)

    async def _retry_or_dead_letter(self, stage: Stage, work: Work, exc: Exception) -> Stage | None:
        """Something unexpected: try again up to the policy's bound, then dead-letter."""
        context = {"idempotency_key": work.key, "stage": stage.value, "reason": str(exc)[:200]}
        work.failures += 1
        if self._retry.allows(work.failures, exc):
            log.warning(
                "unexpected error; trying the step again",
                extra={**context, "error": type(exc).__name__, "attempt": work.failures},
            )
            await self._retry.pause(work.failures, exc)
            return None
        log.error(
            "unexpected error; the record is dead-lettered as internal_error",
            exc_info=exc,
            extra={
                **context,
                "attempts": work.failures,
                "partition": work.source.partition,
                "offset": work.source.offset,
            },
        )
        await self._dead_letter(work, exc)
        return Stage.DONE

    async def _dead_letter(self, work: Work, exc: Exception) -> None:
        """Write the ``internal_error`` dead letter, waiting out a Kafka outage."""
        attempt = 0
        while True:
            try:
                await self._steps.dead_letter_internal(work, exc)
                return
            except Exception as failed:
                if not is_outage(failed):
                    # The record has had every chance and cannot even be dead-lettered: the log
                    # line above is what is left of it; its partition must go on.
                    log.exception("the dead letter could not be written; the record is dropped")
                    return
                attempt += 1
                await self._retry.pause(attempt, failed)

    async def _wait_at_gate(self, deadline_s: float | None) -> None:
        """Wait while MindVideo refuses the operator's credentials (parked: on shutdown this
        work is handed back at once, since it cannot move), or until ``deadline_s``."""
        if self._gate.is_open:
            return
        async with self._handover.parked():
            while not self._gate.is_open:
                wait_s = GATE_CHECK_INTERVAL_S
                if deadline_s is not None:
                    wait_s = min(wait_s, deadline_s - self._wall_clock())
                    if wait_s <= 0:
                        return  # expired: the step rejects it without calling MindVideo
                await self._gate.wait_open_for(wait_s)

    def _deadline_s(self, stage: Stage, work: Work) -> float | None:
        """When ``work``'s waits at ``stage`` must end (``expires_at``), if they must."""
        if stage not in BEFORE_SUBMIT or not work.expirable() or work.request is None:
            return None
        return work.request.deadline_s

    @asynccontextmanager
    async def _key_lock(self, key: str | None) -> AsyncIterator[None]:
        """Serialize records with the same key inside this process (a duplicate waits)."""
        if key is None:
            yield
            return
        lock, users = self._key_locks.get(key, (asyncio.Lock(), 0))
        self._key_locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._key_locks[key]
            if users <= 1:
                del self._key_locks[key]
            else:
                self._key_locks[key] = (lock, users - 1)


def _describe(span: Span, work: Work) -> None:
    """A step span's attributes: who the request is, and where it stands (no input, no
    metadata: those may carry what producers would not put in a trace)."""
    span.set("relay.idempotency_key", work.key)
    if work.known is not None:
        span.set("relay.task_id", work.known.task_id)
    if work.result is not None:
        span.set("relay.result.type", work.result.type)
        span.set("relay.result.status", work.result.status)
