"""``relay reconcile --since 24h``: the tasks the relay submitted in a window, asked of MindVideo,
compared with the relay's records (``relay.spend.reconcile``), printed per model, and the drift
stored in Redis for the running relays to export (``relay.spend.drift``).

Where the task list comes from: the results topic read from the window's start (Kafka's
``offsets_for_times``) for tasks whose result is published, plus the idempotency records in Redis
(a SCAN) for tasks submitted but not published yet. Both exist anyway; reconciliation adds no
per-request state anywhere.

Exit codes: 0 everything agrees, 1 something disagrees, 2 usage or configuration, 3 Kafka, Redis or
MindVideo could not be reached (or refused the key).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from relay.backoff import Backoff
from relay.exceptions import RequestRejected
from relay.kafka import kafka_client_options, start_kafka_client
from relay.metrics import RelayMetrics
from relay.models import ResultRecord, TaskSnapshot, format_ts, parse_rfc3339
from relay.pipeline.idempotency import IdempotencyStore
from relay.pipeline.mindvideo import MindVideoClient
from relay.redis import redis_client
from relay.settings import RelaySettings
from relay.spend.drift import store_drift
from relay.spend.reconcile import IN_FLIGHT, USD_QUANTUM, RelayTask, compare, format_table

FETCH_TIMEOUT_MS = 500
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
COUNTERS = ("relay_cost_estimated_usd_total", "relay_cost_actual_usd_total")
Print = Callable[[str], None]


def parse_since(text: str, now_s: float) -> float:
    """``--since``: a duration back from now (``90s``, ``30m``, ``24h``, ``7d``) or an RFC 3339
    time; ``ValueError`` for anything else."""
    match = DURATION.fullmatch(text.strip())
    if match:
        return now_s - float(match.group(1)) * UNIT_S[match.group(2)]
    return parse_rfc3339(text.strip()).timestamp()


def _submitted_s(value: str | None) -> float | None:
    try:
        return datetime.fromisoformat(value or "").timestamp()
    except ValueError:
        return None


async def published_tasks(settings: RelaySettings, since_s: float) -> dict[str, RelayTask]:
    """Task results on the results topic from ``since_s`` on, for tasks submitted since then."""
    kafka = kafka_client_options(settings)
    consumer = AIOKafkaConsumer(
        **kafka,
        client_id=f"{settings.kafka_client_id}-reconcile",
        group_id=None,
        enable_auto_commit=False,
    )
    found: dict[str, RelayTask] = {}
    try:
        await start_kafka_client(consumer, kafka)
        topic = settings.result_topic
        await consumer.topics()  # loads the metadata partitions_for_topic reads
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return found
        consumer.assign(tps)
        starts = await consumer.offsets_for_times({tp: int(since_s * 1000) for tp in tps})
        ends = await consumer.end_offsets(tps)
        todo: dict[TopicPartition, int] = {}
        for tp in tps:
            start = starts.get(tp)
            if start is not None and start.offset < ends[tp]:
                consumer.seek(tp, start.offset)
                todo[tp] = ends[tp]
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=FETCH_TIMEOUT_MS)
            for records in batch.values():
                for record in records:  # results published meanwhile are welcome too
                    _add_result(found, record.value, since_s)
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    del todo[tp]
    finally:
        await consumer.stop()
    return found


def _add_result(found: dict[str, RelayTask], value: bytes | None, since_s: float) -> None:
    try:
        result = ResultRecord.model_validate_json(value or b"")
    except (ValidationError, ValueError):
        return  # not a result the relay wrote
    submitted = _submitted_s(result.submitted_at)
    if result.task_id is None or submitted is None or submitted < since_s:
        return
    found[result.task_id] = RelayTask(
        task_id=result.task_id,
        idempotency_key=result.idempotency_key,
        model=result.model or "unknown",
        status=result.status,
        cost_estimate=result.cost_estimate,
        cost_actual=result.cost_actual,
        error_code=result.error.code if result.error else None,
    )


async def in_flight_tasks(
    store: IdempotencyStore, since_s: float, known: dict[str, RelayTask]
) -> None:
    """Add the tasks submitted since ``since_s`` whose results are not published yet."""
    async for key, record in store.in_flight():
        submitted = _submitted_s(record.submitted_at)
        if record.task_id is None or record.task_id in known:
            continue
        if submitted is None or submitted < since_s:
            continue
        result = record.result
        known[record.task_id] = RelayTask(
            task_id=record.task_id,
            idempotency_key=key,
            model=record.model or (result.model if result else None) or "unknown",
            status=result.status if result is not None else IN_FLIGHT,
            cost_estimate=record.cost_estimate,
            cost_actual=result.cost_actual if result is not None else None,
            error_code=result.error.code if result is not None and result.error else None,
        )


async def ask_mindvideo(
    settings: RelaySettings, tasks: list[RelayTask], concurrency: int
) -> list[TaskSnapshot | None]:
    """``GET /tasks/{id}`` for each task, ``concurrency`` at once; ``None``: MindVideo does not
    know it. Outages are retried like the relay's own calls; a refused key raises."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = MindVideoClient(
            session,
            base_url=settings.mindvideo_base_url,
            api_key=settings.mindvideo_api_key.get_secret_value(),
            metrics=RelayMetrics(),
            backoff=Backoff(settings.mindvideo_backoff_base_s, settings.mindvideo_backoff_max_s),
            max_attempts=settings.mindvideo_max_attempts,
            request_timeout_s=settings.mindvideo_request_timeout_s,
        )
        gate = asyncio.Semaphore(concurrency)

        async def one(task: RelayTask) -> TaskSnapshot | None:
            async with gate:
                try:
                    return await client.get_task(task.task_id)
                except RequestRejected:
                    return None

        return list(await asyncio.gather(*(one(t) for t in tasks)))


async def counters(urls: list[str]) -> dict[str, dict[str, float]]:
    """The relays' cost counters, summed over ``urls``: counter name → model label → USD."""
    sums: dict[str, dict[str, float]] = {name: {} for name in COUNTERS}
    pattern = re.compile(r'^(relay_cost_\w+_usd_total)\{[^}]*model="([^"]*)"[^}]*\} (\S+)$')
    async with aiohttp.ClientSession() as session:
        for url in urls:
            async with session.get(url) as resp:
                resp.raise_for_status()
                text = await resp.text()
            for line in text.splitlines():
                match = pattern.match(line)
                if match and match.group(1) in sums:
                    by_model = sums[match.group(1)]
                    model = match.group(2)
                    by_model[model] = by_model.get(model, 0.0) + float(match.group(3))
    return sums


def counter_drift(
    settings: RelaySettings,
    sums: dict[str, dict[str, float]],
    pairs: list[tuple[RelayTask, TaskSnapshot | None]],
) -> list[str]:
    """Lines for every model whose counters differ from MindVideo's figures for the same tasks."""
    label = RelayMetrics(model_labels=settings.metrics_models).model_label
    truth: dict[str, dict[str, float]] = {name: {} for name in COUNTERS}
    for task, mv in pairs:
        if mv is None:
            continue
        model = label(task.model)
        est, act = truth[COUNTERS[0]], truth[COUNTERS[1]]
        est[model] = est.get(model, 0.0) + (mv.cost_estimate or 0.0)
        if task.status != IN_FLIGHT:
            act[model] = act.get(model, 0.0) + (mv.cost_actual or 0.0)
    lines = []
    for name in COUNTERS:
        for model in sorted(set(sums[name]) | set(truth[name])):
            ours, theirs = sums[name].get(model, 0.0), truth[name].get(model, 0.0)
            if abs(ours - theirs) >= USD_QUANTUM:
                lines.append(
                    f"{name}{{model={model!r}}}: relays {ours:.4f}, MindVideo {theirs:.4f}"
                )
    return lines


async def reconcile(
    settings: RelaySettings,
    *,
    since_s: float,
    metrics_urls: list[str],
    concurrency: int,
    show: int,
    out: Print = print,
) -> int:
    """Run one reconciliation; the exit code (0 agree, 1 disagree)."""
    now_s = time.time()
    tasks = await published_tasks(settings, since_s)
    published = len(tasks)
    redis = redis_client(settings, max_connections=4)
    try:
        store = IdempotencyStore(
            redis, prefix=settings.redis_key_prefix, retention_s=settings.idempotency_retention_s
        )
        await in_flight_tasks(store, since_s, tasks)
        ordered = list(tasks.values())
        pairs = list(zip(ordered, await ask_mindvideo(settings, ordered, concurrency), strict=True))
        result = compare(pairs)
        since = format_ts(datetime.fromtimestamp(since_s, UTC))
        out(
            f"relay reconcile: {len(ordered)} tasks submitted since {since} "
            f"({published} with a published result, {len(ordered) - published} not yet)"
        )
        for line in format_table(result):
            out(line)
        counter_lines: list[str] = []
        if metrics_urls:
            counter_lines = counter_drift(settings, await counters(metrics_urls), pairs)
            out(
                f"counters of {len(metrics_urls)} relay(s): "
                + ("agree" if not counter_lines else "DIFFER")
            )
            for line in counter_lines:
                out(f"  {line}")
        if result.disagreements:
            out(f"tasks that disagree ({len(result.disagreements)}):")
            for disagreement in result.disagreements[:show]:
                out(f"  {disagreement.line()}")
            if len(result.disagreements) > show:
                out(f"  … and {len(result.disagreements) - show} more (--show N)")
        await store_drift(redis, settings.redis_key_prefix, result.report(now_s, since_s))
    finally:
        await redis.aclose()
    agrees = result.agrees and not counter_lines
    out("result: " + ("everything agrees" if agrees else "DRIFT: the relay and MindVideo disagree"))
    return 0 if agrees else 1
