"""One step per lifecycle stage (``relay.pipeline.lifecycle.Stage``), each returning the next.

A step does its work and raises whatever goes wrong; it never decides what an error leads to:
that is the lifecycle table's, carried out by the dispatcher (``relay.pipeline.processor``).
Everything a record carries from one step to the next is in its ``Work``
(``relay.pipeline.lifecycle``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from relay.exceptions import (
    OperatorError,
    RecordTooLarge,
    RequestExpired,
    RequestRejected,
    RetryableError,
)
from relay.models import (
    DEFAULT_MAX_JSON_DEPTH,
    RequestRecord,
    ResultRecord,
    payload_fingerprint,
    rejection,
    utc_now_iso,
)
from relay.pipeline.decode import DeadLetter, Rejected, decode_request
from relay.pipeline.follower import TaskFollower
from relay.pipeline.handover import Handover
from relay.pipeline.idempotency import (
    FP_TOMBSTONE_CHARS,
    IdempotencyRecord,
    IdempotencyStore,
    KeyState,
    PublishInProgress,
)
from relay.pipeline.lifecycle import (
    INTERNAL_ERROR_REASON,
    KEY_IN_USE_REASON,
    RESULT_TOO_LARGE_REASON,
    UNDECODABLE_RECORD_REASON,
    Stage,
    Work,
)
from relay.pipeline.mindvideo import MindVideoClient
from relay.pipeline.outcomes import OutcomeRecorder
from relay.pipeline.publisher import ResultPublisher
from relay.pipeline.results import failed_result, terminal_result
from relay.spend.guard import BudgetGuard
from relay.tracing.spans import NO_TRACING, Tracing

log = logging.getLogger(__name__)
T = TypeVar("T")

CONFLICT_REASON = "idempotency_conflict"
# How long the winner of a key's publish holds it before another process may publish instead
# (it died after winning): longer than a publish takes even when Kafka is slow.
PUBLISH_LEASE_S = 60
CONFLICT_MARKER = "conflict"  # `seen:conflict` in the key's record: its conflict was published

Step = Callable[[Work], Awaitable[Stage]]


class RequestSteps:
    """The steps, with the components they use; ``run`` runs the one for a stage."""

    def __init__(
        self,
        *,
        store: IdempotencyStore,
        client: MindVideoClient,
        follower: TaskFollower,
        publisher: ResultPublisher,
        outcomes: OutcomeRecorder,
        handover: Handover,
        max_record_bytes: int,
        max_metadata_bytes: int,
        task_timeout_s: float,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
        wall_clock: Callable[[], float] = time.time,
        tracing: Tracing = NO_TRACING,
        budget: BudgetGuard | None = None,
    ) -> None:
        """``budget``: the spend budgets, ``None`` when ``RELAY_BUDGETS`` sets none."""
        self._store = store
        self._tracing = tracing
        self._client = client
        self._follower = follower
        self._publisher = publisher
        self._outcomes = outcomes
        self._handover = handover
        self._max_record_bytes = max_record_bytes
        self._max_metadata_bytes = max_metadata_bytes
        self._max_json_depth = max_json_depth
        self._task_timeout_s = task_timeout_s
        self._wall_clock = wall_clock
        self._budget = budget
        self._steps: dict[Stage, Step] = {
            Stage.DECODE: self.decode,
            Stage.REFUSE: self.refuse,
            Stage.CLAIM: self.claim,
            Stage.RESERVE: self.reserve,
            Stage.SUBMIT: self.submit,
            Stage.FOLLOW: self.follow,
            Stage.PUBLISH: self.publish,
            Stage.MARK: self.mark,
        }

    async def run(self, stage: Stage, work: Work) -> Stage:
        return await self._steps[stage](work)

    async def decode(self, work: Work) -> Stage:
        if work.source.unparseable is not None:
            # Nothing of the record could be read: a dead letter only, with an empty value.
            work.undecodable = DeadLetter(UNDECODABLE_RECORD_REASON, work.source.unparseable, None)
            return Stage.REFUSE
        decoded = decode_request(
            work.source.key,
            work.raw,
            max_record_bytes=self._max_record_bytes,
            max_metadata_bytes=self._max_metadata_bytes,
            max_json_depth=self._max_json_depth,
        )
        if isinstance(decoded, DeadLetter):
            work.undecodable, work.refusal = decoded, decoded.rejected
        elif isinstance(decoded, Rejected):
            work.refusal, work.webhook_url = decoded.result, decoded.webhook_url
        else:
            work.key, work.request = decoded.idempotency_key, decoded.record
            work.webhook_url = decoded.record.webhook_url
            work.raw = None  # from here on the decoded request stands for the bytes
            return Stage.CLAIM
        if work.refusal is not None:
            work.key = work.refusal.idempotency_key
        return Stage.REFUSE

    async def refuse(self, work: Work) -> Stage:
        """Dead-letter what cannot be decoded; publish a rejection decided from the record
        alone once per key and reason, unless a request owns the key (tenants kept apart)."""
        dead, refusal = work.undecodable, work.refusal
        if refusal is None or refusal.error is None:
            assert dead is not None
            await self._dead_letter(work, dead.reason, dead.message)
            return Stage.DONE
        code, message = refusal.error.code, refusal.error.message
        digest = hashlib.sha256(f"{code}\x00{message}".encode()).hexdigest()[:32]
        marker = f"rejected:{digest}"
        status = await self._store.refusal_status(refusal.idempotency_key, marker)
        if status == "in_use":
            await self._dead_letter(
                work,
                KEY_IN_USE_REASON,
                f"the idempotency key belongs to a request already accepted; this record "
                f"would have been rejected with {code}: {message}",
                extra=[("rejection.code", code)],
            )
            return Stage.DONE
        if dead is not None:
            await self._dead_letter(work, dead.reason, dead.message)
        if status == "seen":
            self._outcomes.dedupe("rejected")
            return Stage.DONE
        work.result, work.marker = refusal, marker
        return Stage.PUBLISH

    async def claim(self, work: Work) -> Stage:
        key, rec = _require(work.key), _require(work.request)
        fingerprint = payload_fingerprint(rec.model, rec.input)
        work.fingerprint = fingerprint
        claim = await self._store.claim(
            key,
            fingerprint,
            rec.model,
            utc_now_iso(),
            metadata_json=json.dumps(rec.metadata, separators=(",", ":")),
            webhook_url=work.webhook_url,
        )
        if claim.outcome == "conflict":
            # One idempotency_conflict result per key within the retention, whatever the
            # conflicting payloads: more would let anyone flood the results topic (and its
            # webhooks) under another producer's key. Later conflicts are dead-lettered.
            # Taking the right to publish it is atomic in Redis (a lease, like the publish of a
            # task's result): two processes with conflicting records at once publish one.
            marker = CONFLICT_MARKER
            token = work.publish_token or secrets.token_hex(8)
            work.publish_token = token
            if await self._store.take_once(key, marker, token, PUBLISH_LEASE_S) != "won":
                work.raw = rec.model_dump_json(exclude_none=True).encode()
                await self._dead_letter(
                    work,
                    CONFLICT_REASON,
                    "this idempotency key was already used with a different model or input; "
                    "its idempotency_conflict result is published for another record",
                    extra=[("original.value", "re-encoded")],
                )
                self._outcomes.dedupe("rejected")
                return Stage.DONE
            work.result = rejection(
                key,
                "idempotency_conflict",
                "this idempotency key was already used with a different model or input",
                model=rec.model,
                metadata=rec.metadata,
                variant=f"{CONFLICT_MARKER}:{fingerprint[:FP_TOMBSTONE_CHARS]}",
            )
            work.marker = marker
            return Stage.PUBLISH
        known = claim.record
        if known is None:
            return Stage.RESERVE
        _take_owners_view(work, known)
        if known.state in (KeyState.PUBLISHED, KeyState.REJECTED):
            self._outcomes.dedupe("published")
            log.info("duplicate request, result already published", extra={"idempotency_key": key})
            return Stage.DONE
        if known.state == KeyState.TERMINAL and known.result is not None:
            self._outcomes.dedupe("terminal")
            # A stored rejection stays one: its tombstone frees the key for a corrected request.
            rejected = known.result.type == "request.rejected"
            work.result = known.result
            work.mark = KeyState.REJECTED if rejected else KeyState.PUBLISHED
            return Stage.PUBLISH
        if known.state == KeyState.SUBMITTED and known.task_id is not None:
            self._outcomes.dedupe("resumed")
            log.info("resuming task", extra={"idempotency_key": key, "task_id": known.task_id})
            if self._budget is not None:
                # The previous owner may have stopped between recording the task and charging it.
                await self._budget.charge_resumed(key, known.cost_estimate)
            work.known, work.last_event_id = known, known.last_event_id
            return Stage.FOLLOW
        self._outcomes.dedupe("resubmitted")
        work.resumed_claim = True
        return Stage.RESERVE

    async def reserve(self, work: Work) -> Stage:
        """Take room for the request's expected cost in every spend budget that applies."""
        key, rec = _require(work.key), _require(work.request)
        await self._refuse_if_expired(work, rec)
        if self._budget is not None and work.reservation is None:
            work.reservation = await self._budget.reserve(key, rec)
        return Stage.SUBMIT

    async def submit(self, work: Work) -> Stage:
        """Create the task, record it and charge its estimate as one piece (never cut apart by a
        handover); a retry after the task was recorded only finishes the charge."""
        key, rec = _require(work.key), _require(work.request)
        if not work.recorded:
            await self._refuse_if_expired(work, rec)
            res = work.reservation
            if res is not None and self._budget and not await self._budget.refresh(res):
                work.reservation = None  # it lapsed while the request waited: reserve again
                return Stage.RESERVE
        if work.submit_started_s is None:
            work.submit_started_s = time.monotonic()
        async with self._handover.submit_section():
            if not work.recorded:
                await self._create_and_record(work, key, rec)
            if not work.charged:
                await self._charge(work, rec)
        known = _require(work.known)
        log.info("task submitted", extra={"idempotency_key": key, "task_id": known.task_id})
        return Stage.FOLLOW

    async def _create_and_record(self, work: Work, key: str, rec: RequestRecord) -> None:
        """POST the task (the reservation kept alive meanwhile) and record it in Redis.

        MindVideo's answer is kept in ``work.answer`` until Redis has recorded it: when only the
        Redis write fails (an outage, a Redis at ``maxmemory`` refusing writes), the retry writes
        it again and does not submit again (a submit is paid; the write is not)."""
        if work.answer is None:
            before = work.maybe_submitted
            work.maybe_submitted = True
            try:
                if self._budget is not None:
                    async with self._budget.keep_alive(work.reservation):
                        snapshot = await self._client.submit(key, rec.model, rec.input)
                else:
                    snapshot = await self._client.submit(key, rec.model, rec.input)
            except BaseException as exc:
                work.maybe_submitted = before or _may_have_created(exc)
                if isinstance(exc, RequestRejected):
                    await self._give_back(work)  # refused: nothing was created
                raise
            # Counted once per task: by the owner that records it, unless MindVideo says the
            # submit replays a task that neither this request's earlier tries nor an earlier
            # claim of the key that never recorded its submit (a crash between the two) can have
            # created: the key was claimed afresh after its record was lost, and the task was
            # counted when it was made.
            work.answer = snapshot
            work.foreign_task = (
                snapshot.idempotent_replayed and not before and not work.resumed_claim
            )
        snapshot = work.answer
        submitted_at = utc_now_iso()
        first = await self._store.mark_submitted(
            key,
            task_id=snapshot.task_id,
            request_id=snapshot.request_id,
            cost_estimate=snapshot.cost_estimate,
            submitted_at=submitted_at,
        )
        work.recorded, work.snapshot, work.answer = True, snapshot, None
        work.counts_cost = first and not work.foreign_task
        work.known = IdempotencyRecord(
            state=KeyState.SUBMITTED,
            task_id=snapshot.task_id,
            request_id=snapshot.request_id,
            cost_estimate=snapshot.cost_estimate,
            submitted_at=submitted_at,
        )

    async def _charge(self, work: Work, rec: RequestRecord) -> None:
        """Count the task's estimate once: in the budgets (the reservation becomes it) and in the
        metrics; a task someone else counts gives its reservation back."""
        snapshot = _require(work.snapshot)
        reservation = work.reservation
        if self._budget is not None and reservation is not None:
            if work.counts_cost:
                await self._budget.charge(reservation, snapshot)
            else:
                await self._budget.release(reservation)
        latency_s = time.monotonic() - (work.submit_started_s or time.monotonic())
        self._outcomes.submitted(rec.model, snapshot, latency_s, count=work.counts_cost)
        work.reservation, work.snapshot, work.charged = None, None, True

    async def _refuse_if_expired(self, work: Work, rec: RequestRecord) -> None:
        """Reject a request whose ``expires_at`` passed before anything was submitted."""
        deadline_s = rec.deadline_s
        if not work.expirable() or deadline_s is None or self._wall_clock() < deadline_s:
            return
        await self._give_back(work)
        raise RequestExpired(
            f"expires_at {rec.expires_at} passed before the request was submitted; "
            "nothing was charged"
        )

    async def _give_back(self, work: Work) -> None:
        if self._budget is not None and work.reservation is not None:
            await self._budget.release(work.reservation)
        work.reservation = None

    async def follow(self, work: Work) -> Stage:
        """Follow the task to its end, for what is left of its time since the submit."""
        key, rec, known = _require(work.key), _require(work.request), _require(work.known)
        task_id = _require(known.task_id)

        async def remember(event_id: str) -> None:
            work.last_event_id = event_id
            await self._store.mark_event(key, event_id)

        snapshot = await self._follower.follow(
            task_id, work.last_event_id, remember, timeout_s=self.time_left_s(known)
        )
        if self._budget is not None:
            await self._budget.settle(key, known.cost_estimate, snapshot.cost_actual)
        result = terminal_result(key, rec, known, snapshot)
        # Encoded once: stored (by the publish's compare-and-set, in the same script), then
        # published as is.
        body = result.to_json_bytes()
        work.result, work.body, work.mark = result, body, KeyState.PUBLISHED
        return Stage.PUBLISH

    async def publish(self, work: Work) -> Stage:
        """Publish the result; a claimed request's result (a task's, or MindVideo's rejection)
        only by the process that wins the key's publish compare-and-set
        (``IdempotencyStore.take_publish``), as stored in Redis: two relays with the same key
        and payload on two partitions publish one result."""
        if work.result is None:
            work.result = self._decided_result(work)
        if work.mark in (KeyState.PUBLISHED, KeyState.REJECTED):
            body = work.body if work.body is not None else work.result.to_json_bytes()
            work.body = body
            key = _require(work.key)
            token = work.publish_token or secrets.token_hex(8)
            work.publish_token = token
            turn = await self._store.take_publish(key, body, token, PUBLISH_LEASE_S)
            if turn.outcome == "done":  # counted as a dedupe hit at its claim, if it was one
                log.info("result published by another owner", extra={"idempotency_key": key})
                return Stage.DONE
            if turn.outcome == "busy":
                raise PublishInProgress(
                    "another process holds this key's publish lease; waiting for it"
                )
            if turn.body is not None and turn.body != body:
                work.body, work.result = turn.body, ResultRecord.model_validate_json(turn.body)
        try:
            await self._publisher.publish(
                work.result,
                webhook_url=work.webhook_url,
                body=work.body,
                trace=self._tracing.outbound(work.source.trace),
            )
        except RecordTooLarge as exc:
            # Final: the same record would be refused for ever. The result goes to the
            # dead-letter topic instead (cut to fit if need be) and the key is marked, so a
            # duplicate of the request does not publish or charge again.
            body = work.body if work.body is not None else work.result.to_json_bytes()
            work.raw = body
            await self._dead_letter(work, RESULT_TOO_LARGE_REASON, str(exc))
            work.raw = None
            return Stage.MARK
        self._outcomes.published(work.result, work.source.timestamp_ms)
        return Stage.MARK

    async def mark(self, work: Work) -> Stage:
        key, result = _require(work.key), _require(work.result)
        if work.marker is not None:
            await self._store.first_time(key, work.marker)
        if work.mark == KeyState.PUBLISHED:
            await self._store.mark_published(key, result, work.fingerprint)
        elif work.mark == KeyState.REJECTED:
            await self._store.mark_rejected(key, result, work.fingerprint)
        return Stage.DONE

    async def dead_letter_internal(self, work: Work, exc: BaseException) -> None:
        """Dead-letter a record the relay failed to carry through: ``internal_error``, with the
        error's class and message in headers. The value is the record's bytes while they are
        kept, afterwards the request as decoded, encoded again (``original.value`` says which).
        The dispatcher logs it (once)."""
        cls = type(exc)
        name = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
        kind = "original"
        if work.raw is None and work.request is not None:
            kind = "re-encoded"
            work.raw = work.request.model_dump_json(exclude_none=True).encode()
        await self._publisher.dead_letter(
            work.source,
            INTERNAL_ERROR_REASON,
            str(exc) or name,
            value=work.raw,
            extra_headers=[("error.class", name), ("original.value", kind)],
        )

    def time_left_s(self, known: IdempotencyRecord) -> float:
        """What is left of ``RELAY_TASK_TIMEOUT_S`` since the submit (all of it if the submit
        time cannot be read)."""
        try:
            submitted = datetime.fromisoformat(known.submitted_at or "").timestamp()
        except ValueError:
            return self._task_timeout_s
        return self._task_timeout_s - max(0.0, self._wall_clock() - submitted)

    def _decided_result(self, work: Work) -> ResultRecord:
        key, rec, decided = _require(work.key), _require(work.request), _require(work.decided)
        if work.mark == KeyState.REJECTED:
            return rejection(
                key,
                decided.code,
                decided.message,
                model=rec.model,
                metadata=rec.metadata,
                variant=_require(work.fingerprint)[:FP_TOMBSTONE_CHARS],
            )
        return failed_result(key, rec, _require(work.known), decided.code, decided.message)

    async def _dead_letter(
        self, work: Work, reason: str, message: str, extra: list[tuple[str, str]] | None = None
    ) -> None:
        source = work.source
        log.warning(
            "record dead-lettered",
            extra={
                "reason": reason,
                "idempotency_key": work.key,
                "partition": source.partition,
                "offset": source.offset,
            },
        )
        await self._publisher.dead_letter(
            source, reason, message, value=work.raw, extra_headers=extra or []
        )


def _take_owners_view(work: Work, known: IdempotencyRecord) -> None:
    """A record resuming a key another record claimed: the result goes out with the first
    claim's ``metadata`` and ``webhook_url`` (a second producer of the same key and payload does
    not get to redirect or relabel it). Records from before these were stored keep their own."""
    rec = work.request
    if rec is None or known.owner_metadata is None:
        return
    metadata = json.loads(known.owner_metadata)
    work.request = rec.model_copy(
        update={"metadata": metadata, "webhook_url": known.owner_webhook_url or None}
    )
    work.webhook_url = known.owner_webhook_url or None


def _may_have_created(exc: BaseException) -> bool:
    """Whether a failed submit may still have created the task at MindVideo."""
    if isinstance(exc, RequestRejected | OperatorError):
        return False  # MindVideo answered with a refusal: nothing was created
    if isinstance(exc, RetryableError):
        return exc.maybe_sent
    return True  # cancelled mid-call, or unknown: assume it may have


def _require(value: T | None) -> T:
    """A value an earlier step has set (the stage order guarantees it)."""
    if value is None:
        raise RuntimeError("the lifecycle reached a step before the step that prepares it")
    return value
