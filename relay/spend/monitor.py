"""Budgets and the last reconciliation as operators see them: gauges and the status page.

Every ``interval_s`` the monitor lapses expired reservations (so a crashed holder's room comes back
even when nobody reserves), reads each rule's current window from Redis into the ``relay_budget_*``
gauges, reads the spend of the last hour minute by minute for the status page's chart, refreshes
the learned prices, and exports the last ``relay reconcile`` drift. Every relay reads the same
Redis, so every relay exports the same budget figures: aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from relay.metrics import RelayMetrics
from relay.redis import RedisClient
from relay.spend.drift import read_drift
from relay.spend.guard import BudgetGuard
from relay.spend.ledger import RuleUsage
from relay.spend.prices import to_usd

log = logging.getLogger(__name__)

MONITOR_INTERVAL_S = 5.0


class BudgetMonitor:
    """Keeps the budget and reconciliation gauges current; ``start()``/``stop()``."""

    def __init__(
        self,
        redis: RedisClient,
        metrics: RelayMetrics,
        *,
        prefix: str,
        guard: BudgetGuard | None,
        interval_s: float = MONITOR_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._prefix = prefix
        self._guard = guard
        self._interval_s = interval_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._usage: list[RuleUsage] = []
        self._history: list[tuple[float, int]] = []
        self._drift_labels: set[str] = set()
        if guard is not None:
            for rule in guard.rules:  # every series exists from the start (at 0)
                labels = (rule.name, rule.window)
                metrics.budget_limit.labels(*labels).set(rule.limit_usd)
                metrics.budget_exhausted.labels(*labels).inc(0)
                for gauge in (metrics.budget_held, metrics.budget_held_oldest):
                    gauge.labels(*labels).set(0)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="budget-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except RedisError as exc:
                log.warning("budget figures not refreshed", extra={"reason": repr(exc)})
            await asyncio.sleep(self._interval_s)

    async def refresh(self) -> None:
        """One pass: lapse, read, export."""
        guard, m = self._guard, self._metrics
        if guard is not None:
            lapsed = await guard.ledger.sweep()
            if lapsed:
                guard.lapsed(lapsed)
            self._usage = await guard.ledger.usage(guard.rules)
            for usage in self._usage:
                name, window = usage.rule.name, usage.rule.window
                m.budget_spent.labels(name, window).set(to_usd(usage.spent_micro))
                m.budget_reserved.labels(name, window).set(to_usd(usage.reserved_micro))
                m.budget_instances.labels(name, window).set(usage.instances)
            for (budget, held_window), age in guard.oldest_held_s().items():
                m.budget_held_oldest.labels(budget, held_window).set(age)
            self._history = await guard.ledger.spend_by_minute()
            guard.prices.replace_learned(await guard.ledger.learned_prices())
        await self._export_drift()

    async def _export_drift(self) -> None:
        report = await read_drift(self._redis, self._prefix)
        if report is None:
            return
        m = self._metrics
        drift: dict[str, float] = {}
        mismatched: dict[str, float] = {}
        for model, usd in report.drift_usd.items():
            label = m.model_label(model)
            drift[label] = drift.get(label, 0.0) + usd
        for model, count in report.mismatched.items():
            label = m.model_label(model)
            mismatched[label] = mismatched.get(label, 0.0) + count
        for label in self._drift_labels - set(drift) - set(mismatched):
            m.reconcile_drift.metric.remove(label)
            m.reconcile_mismatched.metric.remove(label)
        for label in set(drift) | set(mismatched):
            m.reconcile_drift.metric.labels(label).set(round(drift.get(label, 0.0), 6))
            m.reconcile_mismatched.metric.labels(label).set(mismatched.get(label, 0.0))
        self._drift_labels = set(drift) | set(mismatched)
        m.reconcile_last_run.set(report.at_s)

    def view(self) -> dict[str, Any]:
        """What the status page shows: each rule's use, and spend per minute over the last hour.
        Scoped rules show their fullest instance and how many instances there are (never which
        model or tenant: metadata values stay off the page)."""
        guard = self._guard
        held = {}
        if guard is not None:
            held = {labels: len(since) for labels, since in guard.held.items()}
        return {
            "configured": guard is not None,
            "mode": None if guard is None else guard.mode,
            "rules": [
                {
                    "name": u.rule.name,
                    "scope": u.rule.scope,
                    "window": u.rule.window,
                    "limit_usd": u.rule.limit_usd,
                    "spent_usd": to_usd(u.spent_micro),
                    "reserved_usd": to_usd(u.reserved_micro),
                    "instances": u.instances,
                    "window_end_s": u.window_end_s,
                    "held": held.get((u.rule.name, u.rule.window), 0),
                }
                for u in self._usage
            ],
            "spend_last_hour": [
                {"minute_s": start_s, "usd": to_usd(micro)} for start_s, micro in self._history
            ],
            "spend_last_hour_usd": to_usd(sum(micro for _, micro in self._history)),
        }
