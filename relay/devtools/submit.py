"""``relay submit``: produce one generation request and, with ``--wait``, print its result.

It is what a user's producer does, from the command line: the request record of DESIGN §2,
keyed by its idempotency key, on the requests topic; then the result record of DESIGN §3 read
back from the results topic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from relay.exceptions import ConnectivityError
from relay.kafka import kafka_client_options, start_kafka_client
from relay.models import RequestRecord
from relay.schemas import SEEDANCE_4_0
from relay.settings import RelaySettings

EXIT_SUCCEEDED = 0
EXIT_NOT_SUCCEEDED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help="the text prompt")
    parser.add_argument(
        "--model", default=SEEDANCE_4_0, help=f"model slug (default {SEEDANCE_4_0})"
    )
    parser.add_argument("--n", type=int, help="number of images")
    parser.add_argument("--size", help="aspect ratio, e.g. 1:1, 16:9")
    parser.add_argument("--resolution", choices=["1K", "2K", "4K"], help="output resolution")
    parser.add_argument("--input", dest="input_json", help="the model input as a JSON object")
    parser.add_argument(
        "--json",
        dest="json_file",
        type=Path,
        help="a whole request record from a file ('-': stdin)",
    )
    parser.add_argument("--key", help="idempotency key (default: a new random one)")
    parser.add_argument("--webhook-url", help="deliver this request's result here")
    parser.add_argument(
        "--metadata", action="append", default=[], metavar="K=V", help="metadata entry, repeatable"
    )
    parser.add_argument("--wait", action="store_true", help="wait for the result and print it")
    parser.add_argument(
        "--timeout-s", type=float, default=300.0, help="how long --wait waits (default 300)"
    )


def build_request(args: argparse.Namespace) -> RequestRecord:
    """The request record from flags or a file; raises ``ValueError`` with a clear message."""
    if args.json_file is not None:
        text = sys.stdin.read() if str(args.json_file) == "-" else args.json_file.read_text()
        data: dict[str, Any] = json.loads(text)
    else:
        payload: dict[str, Any] = json.loads(args.input_json) if args.input_json else {}
        for name in ("prompt", "n", "size", "resolution"):
            value = getattr(args, name)
            if value is not None:
                payload[name] = value
        if not payload:
            raise ValueError("give --prompt (and options), --input or --json")
        data = {"model": args.model, "input": payload}
    if args.key:
        data["idempotency_key"] = args.key
    data.setdefault("idempotency_key", f"cli-{uuid.uuid4().hex[:16]}")
    if args.webhook_url:
        data["webhook_url"] = args.webhook_url
    if args.metadata:
        meta = dict(data.get("metadata") or {})
        for item in args.metadata:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--metadata wants K=V, got {item!r}")
            meta[name] = value
        data["metadata"] = meta
    return RequestRecord.model_validate(data)


async def _submit(args: argparse.Namespace, settings: RelaySettings) -> int:
    request = build_request(args)
    key = request.idempotency_key or ""
    consumer = None
    if args.wait:
        consumer = await _results_from_now(settings)
    # One record keyed by its idempotency key: a duplicate from a retried send costs nothing (the
    # relay dedupes by key), so the idempotent producer, which some brokers refuse, is not needed.
    kafka = kafka_client_options(settings)
    producer = AIOKafkaProducer(**kafka, enable_idempotence=False, acks="all")
    try:
        await start_kafka_client(producer, kafka)
        meta = await producer.send_and_wait(
            settings.request_topic,
            value=request.model_dump_json(exclude_none=True).encode(),
            key=key.encode(),
        )
    except BaseException:
        if consumer is not None:
            await consumer.stop()
        raise
    finally:
        await producer.stop()
    print(
        f"submitted {key} to {settings.request_topic} "
        f"(partition {meta.partition}, offset {meta.offset})",
        file=sys.stderr,
    )
    if consumer is None:
        return EXIT_SUCCEEDED
    try:
        result = await _wait_for(consumer, key, args.timeout_s)
    finally:
        await consumer.stop()
    if result is None:
        print(f"no result for {key} within {args.timeout_s:.0f}s", file=sys.stderr)
        return EXIT_TIMEOUT
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return EXIT_SUCCEEDED if result.get("status") == "succeeded" else EXIT_NOT_SUCCEEDED


async def _results_from_now(settings: RelaySettings) -> AIOKafkaConsumer:
    """A consumer positioned at the current end of the results topic (before we produce)."""
    kafka = kafka_client_options(settings)
    consumer = AIOKafkaConsumer(**kafka, enable_auto_commit=False)
    try:
        await start_kafka_client(consumer, kafka)
    except (KafkaError, ConnectivityError):
        await consumer.stop()
        raise
    partitions = consumer.partitions_for_topic(settings.result_topic)
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(settings.result_topic) or {0}
    tps = [TopicPartition(settings.result_topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    return consumer


async def _wait_for(
    consumer: AIOKafkaConsumer, key: str, timeout_s: float
) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        for records in batch.values():
            for record in records:
                if record.key == key.encode():
                    value: dict[str, Any] = json.loads(record.value)
                    return value
    return None


def run(args: argparse.Namespace, settings: RelaySettings) -> int:
    try:
        return asyncio.run(_submit(args, settings))
    except (ValueError, OSError, ConnectivityError) as exc:
        print(f"relay submit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KafkaError as exc:
        print(
            f"relay submit: Kafka at {settings.kafka_bootstrap_servers} failed: {exc!r} "
            "(is `relay dev` running, or RELAY_KAFKA_BOOTSTRAP_SERVERS set?)",
            file=sys.stderr,
        )
        return EXIT_USAGE
