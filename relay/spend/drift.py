"""The last reconciliation's drift, kept in Redis so that every running relay exports it.

``relay reconcile`` writes one hash (``<prefix>:reconcile``) when it finishes: when it ran, the
window it covered, and per model the USD drift (MindVideo's cost minus the relay's records) and the
number of tasks that disagree. Relays read it with their budget gauges (``relay.spend.monitor``)
and export ``relay_reconcile_drift_usd{model}``, ``relay_reconcile_mismatched_tasks{model}`` and
``relay_reconcile_last_run_timestamp_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.redis import RedisClient, pipeline

DRIFT_RETENTION_S = 30 * 24 * 3600


def drift_key(prefix: str) -> str:
    return f"{prefix}:reconcile"


@dataclass
class DriftReport:
    """Per model: USD drift and tasks that disagree; ``at_s`` when reconciled."""

    at_s: float
    since_s: float
    drift_usd: dict[str, float] = field(default_factory=dict)
    mismatched: dict[str, int] = field(default_factory=dict)


async def store_drift(redis: RedisClient, prefix: str, report: DriftReport) -> None:
    """Replace the last report with ``report``."""
    fields: dict[str, str] = {"at": repr(report.at_s), "since": repr(report.since_s)}
    for model, usd in report.drift_usd.items():
        fields[f"drift:{model}"] = repr(usd)
    for model, count in report.mismatched.items():
        fields[f"mismatched:{model}"] = str(count)
    key = drift_key(prefix)
    async with pipeline(redis) as pipe:  # one key: a cluster pipeline sends it to one node
        pipe.delete(key)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, DRIFT_RETENTION_S)
        await pipe.execute()


async def read_drift(redis: RedisClient, prefix: str) -> DriftReport | None:
    raw = await redis.hgetall(drift_key(prefix))
    if not raw:
        return None
    text = {_text(k): _text(v) for k, v in raw.items()}
    report = DriftReport(at_s=float(text.get("at", 0)), since_s=float(text.get("since", 0)))
    for name, value in text.items():
        kind, _, model = name.partition(":")
        if kind == "drift":
            report.drift_usd[model] = float(value)
        elif kind == "mismatched":
            report.mismatched[model] = int(value)
    return report


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
