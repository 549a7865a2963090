"""Works one request record from decode to published result (DESIGN §1, §3–§5).

decode → claim the key in Redis → submit (or resume) → follow to terminal → publish → mark.
A MindVideo outage holds the work (retried with capped backoff for as long as it lasts) and never
turns into rejections: a rejection promises that nothing was charged, and a submit that timed out
may have been.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TypeVar

from relay.backoff import Backoff
from relay.exceptions import OperatorError, RequestRejected, RetryableError
from relay.metrics import RelayMetrics
from relay.models import (
    ResultRecord,
    TaskSnapshot,
    payload_fingerprint,
    rejection,
    utc_now_iso,
)
from relay.pipeline.consumer import SourceRecord
from relay.pipeline.decode import DeadLetter, Rejected, Request, decode_request
from relay.pipeline.follower import FollowTimeout, TaskFollower
from relay.pipeline.gate import CredentialGate
from relay.pipeline.handover import Handover
from relay.pipeline.idempotency import IdempotencyRecord, IdempotencyStore
from relay.pipeline.mindvideo import MindVideoClient
from relay.pipeline.publisher import ResultPublisher
from relay.pipeline.results import terminal_result
from relay.status import RecentResults

log = logging.getLogger(__name__)
T = TypeVar("T")

GATE_CHECK_INTERVAL_S = 1.0


class RequestProcessor:
    """Turns one request record into exactly one result record (or a dead letter)."""

    def __init__(
        self,
        *,
        store: IdempotencyStore,
        client: MindVideoClient,
        follower: TaskFollower,
        publisher: ResultPublisher,
        metrics: RelayMetrics,
        recent: RecentResults,
        gate: CredentialGate,
        outage_backoff: Backoff,
        handover: Handover,
        max_record_bytes: int,
        max_metadata_bytes: int,
    ) -> None:
        self._store = store
        self._client = client
        self._follower = follower
        self._publisher = publisher
        self._metrics = metrics
        self._recent = recent
        self._gate = gate
        self._outage_backoff = outage_backoff
        self._handover = handover
        self._max_record_bytes = max_record_bytes
        self._max_metadata_bytes = max_metadata_bytes
        self._key_locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def process(self, source: SourceRecord) -> None:
        decoded = decode_request(
            source.key,
            source.value,
            max_record_bytes=self._max_record_bytes,
            max_metadata_bytes=self._max_metadata_bytes,
        )
        if isinstance(decoded, DeadLetter):
            log.warning(
                "record dead-lettered",
                extra={
                    "reason": decoded.reason,
                    "partition": source.partition,
                    "offset": source.offset,
                },
            )
            await self._publisher.dead_letter(source, decoded.reason, decoded.message)
            if decoded.rejected is not None:
                await self._refuse(decoded.rejected, None)
            return
        if isinstance(decoded, Rejected):
            await self._refuse(decoded.result, decoded.webhook_url)
            return
        async with self._key_lock(decoded.idempotency_key):
            await self._work(decoded, source.timestamp_ms)

    async def _refuse(self, result: ResultRecord, webhook_url: str | None) -> None:
        """Publish a rejection decided from the record alone, once per key and reason.

        Nothing is claimed: the key stays free for a corrected request, and a valid request
        already running under the same key keeps its state.
        """
        assert result.error is not None
        reason = hashlib.sha256(f"{result.error.code}\x00{result.error.message}".encode())
        async with self._key_lock(result.idempotency_key):
            if not await self._store.first_time(
                result.idempotency_key, f"rejected:{reason.hexdigest()[:32]}"
            ):
                self._metrics.dedupe_hits.labels("rejected").inc()
                return
            await self._publish_rejection(result, remember=False, webhook_url=webhook_url)

    async def _work(self, request: Request, record_ts_ms: int) -> None:
        key, rec = request.idempotency_key, request.record
        fingerprint = payload_fingerprint(rec.model, rec.input)
        claim = await self._store.claim(key, fingerprint, rec.model, utc_now_iso())
        if claim.outcome == "conflict":
            if not await self._store.first_time(key, f"conflict:{fingerprint}"):
                self._metrics.dedupe_hits.labels("rejected").inc()
                return
            await self._publish_rejection(
                rejection(
                    key,
                    "idempotency_conflict",
                    "this idempotency key was already used with a different model or input",
                    model=rec.model,
                    metadata=rec.metadata,
                ),
                remember=False,
                webhook_url=rec.webhook_url,
            )
            return
        known = claim.record
        if known is not None and known.state in ("published", "rejected"):
            self._metrics.dedupe_hits.labels("published").inc()
            log.info("duplicate request, result already published", extra={"idempotency_key": key})
            return
        if known is not None and known.state == "terminal" and known.result is not None:
            self._metrics.dedupe_hits.labels("terminal").inc()
            await self._publish_result(known.result, record_ts_ms, rec.webhook_url)
            return
        if known is not None and known.state == "submitted" and known.task_id is not None:
            self._metrics.dedupe_hits.labels("resumed").inc()
            log.info("resuming task", extra={"idempotency_key": key, "task_id": known.task_id})
        else:
            if known is not None:
                self._metrics.dedupe_hits.labels("resubmitted").inc()
            try:
                known = await self._submit(request)
            except RequestRejected as exc:
                await self._publish_rejection(
                    rejection(key, exc.code, exc.message, model=rec.model, metadata=rec.metadata),
                    webhook_url=rec.webhook_url,
                )
                return
        try:
            result = terminal_result(key, rec, known, await self._follow(key, known))
        except FollowTimeout as exc:
            log.error(
                "task did not finish in time",
                extra={"idempotency_key": key, "task_id": known.task_id},
            )
            result = terminal_result(key, rec, known, None, timeout_message=str(exc))
        body = result.to_json_bytes()  # encoded once: stored, then published as is
        await self._store.mark_terminal(key, body)
        await self._publish_result(result, record_ts_ms, rec.webhook_url, body)

    async def _submit(self, request: Request) -> IdempotencyRecord:
        key, rec = request.idempotency_key, request.record
        started = time.monotonic()
        async with self._handover.submit_section():
            snapshot = await self._through_outages(
                lambda: self._client.submit(key, rec.model, rec.input)
            )
            submitted_at = utc_now_iso()
            await self._store.mark_submitted(
                key,
                task_id=snapshot.task_id,
                request_id=snapshot.request_id,
                cost_estimate=snapshot.cost_estimate,
                submitted_at=submitted_at,
            )
        self._metrics.submit_latency.observe(time.monotonic() - started)
        self._metrics.tasks_submitted.labels(rec.model).inc()
        if snapshot.cost_estimate is not None:
            self._metrics.cost_estimated.labels(rec.model).inc(snapshot.cost_estimate)
        log.info("task submitted", extra={"idempotency_key": key, "task_id": snapshot.task_id})
        return IdempotencyRecord(
            state="submitted",
            task_id=snapshot.task_id,
            request_id=snapshot.request_id,
            cost_estimate=snapshot.cost_estimate,
            submitted_at=submitted_at,
        )

    async def _follow(self, key: str, known: IdempotencyRecord) -> TaskSnapshot:
        """The terminal snapshot; raises ``FollowTimeout`` after ``RELAY_TASK_TIMEOUT_S``."""
        assert known.task_id is not None
        task_id = known.task_id

        async def remember(event_id: str) -> None:
            await self._store.mark_event(key, event_id)

        return await self._through_outages(
            lambda: self._follower.follow(task_id, known.last_event_id, remember)
        )

    async def _through_outages(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` until it succeeds; outages and credential problems wait, never reject."""
        round_ = 0
        while True:
            while not self._gate.is_open:
                self._handover.check()
                await self._gate.wait_open_for(GATE_CHECK_INTERVAL_S)
            try:
                return await call()
            except OperatorError as exc:
                self._gate.close(exc)
            except RetryableError as exc:
                round_ += 1
                delay = self._outage_backoff.delay_s(round_, exc.retry_after_s)
                log.warning(
                    "MindVideo unavailable, holding the request",
                    extra={"delay_s": round(delay, 3), "reason": str(exc)},
                )
                await self._handover.sleep(delay)

    async def _publish_result(
        self,
        result: ResultRecord,
        record_ts_ms: int,
        webhook_url: str | None,
        body: bytes | None = None,
    ) -> None:
        await self._publisher.publish(result, webhook_url=webhook_url, body=body)
        await self._store.mark_published(result.idempotency_key)
        model = result.model or "unknown"
        self._metrics.tasks_terminal.labels(model, result.status).inc()
        self._recent.add(result)
        if result.cost_actual:
            self._metrics.cost_actual.labels(model).inc(result.cost_actual)
        if result.submitted_at:
            submitted = datetime.fromisoformat(result.submitted_at)
            completed = datetime.fromisoformat(result.completed_at)
            self._metrics.task_duration.labels(model).observe(
                max(0.0, (completed - submitted).total_seconds())
            )
        if record_ts_ms > 0:
            self._metrics.end_to_end_latency.observe(max(0.0, time.time() - record_ts_ms / 1000))
        log.info(
            "result published",
            extra={
                "idempotency_key": result.idempotency_key,
                "task_id": result.task_id,
                "status": result.status,
            },
        )

    async def _publish_rejection(
        self, result: ResultRecord, *, remember: bool = True, webhook_url: str | None = None
    ) -> None:
        assert result.error is not None
        await self._publisher.publish(result, webhook_url=webhook_url)
        if remember:
            await self._store.mark_rejected(result.idempotency_key, result)
        self._metrics.requests_rejected.labels(result.error.code).inc()
        self._metrics.tasks_terminal.labels(result.model or "unknown", "rejected").inc()
        self._recent.add(result)
        log.info(
            "request rejected",
            extra={"idempotency_key": result.idempotency_key, "code": result.error.code},
        )

    @asynccontextmanager
    async def _key_lock(self, key: str) -> AsyncIterator[None]:
        """Serialize records with the same key inside this process (a duplicate waits)."""
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
