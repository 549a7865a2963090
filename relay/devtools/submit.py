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
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from pydantic import ValidationError

from relay.devtools.results import KeyResultReader
from relay.exceptions import StartupError
from relay.kafka import kafka_client_options, start_kafka_client
from relay.models import RequestRecord
from relay.schemas import SEEDANCE_4_0, validate_input
from relay.settings import RelaySettings
from relay.startup import describe_start_failure, quiet_kafka_client

EXIT_SUCCEEDED = 0
EXIT_NOT_SUCCEEDED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3

EXIT_CODES_HELP = """exit codes:
  0  submitted (without --wait), or the result is task.succeeded
  1  the result is not a success (task.failed, task.cancelled, request.rejected), or Kafka
     could not be reached (the one-line message names it and RELAY_KAFKA_BOOTSTRAP_SERVERS)
  2  usage: a bad flag, bad JSON, an input the model's schema refuses (nothing is produced),
     or an invalid RELAY_* setting
  3  --wait timed out before a result was published

With --wait, a key whose result is already on the results topic is printed at once and
nothing is produced again."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Produce one generation request to RELAY_REQUEST_TOPIC on "
        "RELAY_KAFKA_BOOTSTRAP_SERVERS, after checking it as the relay would; with --wait, "
        "print its result record from RELAY_RESULT_TOPIC."
    )
    parser.epilog = EXIT_CODES_HELP
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


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, got {type(value).__name__}")
    return value


def build_request(args: argparse.Namespace) -> RequestRecord:
    """The request record from flags or a file, checked as the relay will check it (the record's
    shape, then the input against the model's schema when the relay knows it); raises
    ``ValueError`` with a one-line message naming the flag or field."""
    if args.json_file is not None:
        text = sys.stdin.read() if str(args.json_file) == "-" else args.json_file.read_text()
        data = _json_object(text, f"--json {args.json_file}")
    else:
        payload = _json_object(args.input_json, "--input") if args.input_json else {}
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
    try:
        request = RequestRecord.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise ValueError(f"not a valid request record: {fields}") from None
    errors = validate_input(request.model, request.input)
    if errors:
        fields = "; ".join(f"{e.field}: {e.message}" for e in errors)
        raise ValueError(f"the relay would reject this input for {request.model}: {fields}")
    return request


async def _submit(args: argparse.Namespace, settings: RelaySettings) -> int:
    request = build_request(args)
    key = request.idempotency_key or ""
    reader: KeyResultReader | None = None
    try:
        if args.wait:
            reader = KeyResultReader(settings, key)
            await reader.start()
            published = await reader.already_published()
            if published.task_result is not None:
                _say(
                    f"{key} already has a result on {settings.result_topic}; nothing submitted "
                    "(use a new --key for a new request)"
                )
                return _print_result(published.task_result)
            if published.rejection is not None:
                code = (published.rejection.get("error") or {}).get("code")
                _say(f"an earlier request with key {key} was rejected ({code}); submitting again")
        meta = await _produce(settings, key, request)
        where = f"{settings.request_topic} (partition {meta.partition}, offset {meta.offset})"
        if reader is None:
            _say(
                f"submitted {key} to {where}. To see its outcome, run the same command again "
                f"with --key {key} --wait: the relay deduplicates by key (nothing runs or is "
                "charged twice) and a result already published is printed at once"
            )
            return EXIT_SUCCEEDED
        _say(f"submitted {key} to {where}; waiting up to {args.timeout_s:g}s for its result")
        result = await reader.next_result(args.timeout_s)
    finally:
        if reader is not None:
            await reader.stop()
    if result is None:
        _say(
            f"no result for {key} within {args.timeout_s:g}s (is a relay consuming "
            f"{settings.request_topic}?); run again with --key {key} --wait to keep waiting"
        )
        return EXIT_TIMEOUT
    return _print_result(result)


async def _produce(settings: RelaySettings, key: str, request: RequestRecord) -> RecordMetadata:
    # One record keyed by its idempotency key: a duplicate from a retried send costs nothing (the
    # relay dedupes by key), so the idempotent producer, which some brokers refuse, is not needed.
    kafka = kafka_client_options(settings)
    producer = AIOKafkaProducer(**kafka, enable_idempotence=False, acks="all")
    try:
        await start_kafka_client(producer, kafka)
        return await producer.send_and_wait(
            settings.request_topic,
            value=request.model_dump_json(exclude_none=True).encode(),
            key=key.encode(),
        )
    finally:
        await producer.stop()


def _print_result(result: dict[str, Any]) -> int:
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return EXIT_SUCCEEDED if result.get("status") == "succeeded" else EXIT_NOT_SUCCEEDED


def _say(text: str) -> None:
    print(f"relay submit: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, settings: RelaySettings) -> int:
    """``relay submit``; the exit codes are ``EXIT_CODES_HELP``."""
    quiet_kafka_client()
    try:
        return asyncio.run(_submit(args, settings))
    except (ValueError, OSError) as exc:
        _say(str(exc))
        return EXIT_USAGE
    except (KafkaError, StartupError) as exc:
        # StartupError: Kafka refuses the connection settings (a login, a certificate).
        _say(str(describe_start_failure(exc, settings)))
        return EXIT_NOT_SUCCEEDED
