"""What operators see of each request's outcome: the metrics, the status page's recent results and
one log line per submit and per published result. The steps call it; it decides nothing."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from relay.metrics import RelayMetrics
from relay.models import ResultRecord, TaskSnapshot
from relay.status import RecentResults

log = logging.getLogger(__name__)


class OutcomeRecorder:
    """Counts submits, dedupe hits, results and rejections (bounded labels only)."""

    def __init__(
        self,
        metrics: RelayMetrics,
        recent: RecentResults,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._recent = recent
        self._wall_clock = wall_clock

    def dedupe(self, outcome: str) -> None:
        """A key already known: ``rejected``, ``published``, ``terminal``, ``resumed`` or
        ``resubmitted``."""
        self._metrics.dedupe_hits.labels(outcome).inc()

    def submitted(
        self, model: str, snapshot: TaskSnapshot, latency_s: float, *, count: bool = True
    ) -> None:
        """A submit is recorded. ``count``: this is the one count of the task and its estimate
        (not when another owner recorded it, or it replays a task counted when it was made)."""
        self._metrics.submit_latency.observe(latency_s)
        if not count:
            return
        self._metrics.tasks_submitted.labels(model).inc()
        if snapshot.cost_estimate is not None:
            self._metrics.cost_estimated.labels(model).inc(snapshot.cost_estimate)

    def published(self, result: ResultRecord, record_ts_ms: int) -> None:
        """A result is on the results topic: a task's end or a rejection."""
        self._recent.add(result)
        model = result.model or "unknown"
        if result.error is not None and result.type == "request.rejected":
            self._metrics.requests_rejected.labels(result.error.code).inc()
            self._metrics.tasks_terminal.labels(model, "rejected").inc()
            log.info(
                "request rejected",
                extra={"idempotency_key": result.idempotency_key, "code": result.error.code},
            )
            return
        self._metrics.tasks_terminal.labels(model, result.status).inc()
        if result.cost_actual:
            self._metrics.cost_actual.labels(model).inc(result.cost_actual)
        if result.submitted_at:
            submitted = datetime.fromisoformat(result.submitted_at)
            completed = datetime.fromisoformat(result.completed_at)
            self._metrics.task_duration.labels(model).observe(
                max(0.0, (completed - submitted).total_seconds())
            )
        if record_ts_ms > 0:
            self._metrics.end_to_end_latency.observe(
                max(0.0, self._wall_clock() - record_ts_ms / 1000)
            )
        log.info(
            "result published",
            extra={
                "idempotency_key": result.idempotency_key,
                "task_id": result.task_id,
                "status": result.status,
            },
        )
