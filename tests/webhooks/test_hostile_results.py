"""Result records written by someone else than the relay (anyone who may write to the results
topic): a delivery that cannot even be built as an HTTP request is a failed attempt on the
schedule, ending in the webhook dead-letter topic, and an invalid ``traceparent`` never reaches a
receiver. Real broker, Redis, relay process and receiver."""

from __future__ import annotations

import json
import subprocess

from aiokafka import AIOKafkaProducer

from tests.support.pipeline import Pipeline
from tests.support.services import TopicFactory, require_tool
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import metric, read_topic, webhook_dlq, webhook_env

TIMEOUT_S = 20.0
BAD_PARENT = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-\x01evil"


async def test_an_unbuildable_delivery_is_counted_and_dead_lettered(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    receiver = Receiver()
    await receiver.start()
    dlq = await webhook_dlq(pipeline, topics)
    env = webhook_env(
        dlq, RELAY_WEBHOOK_DEFAULT_URL=receiver.url, RELAY_WEBHOOK_RETRY_SCHEDULE="0,0.2,0.2"
    )
    body = json.dumps({"event_id": "e", "type": "task.succeeded"}).encode()
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.bootstrap)
    try:
        _, port = await pipeline.start_relay(**env)
        await producer.start()
        # An event id no HTTP header can carry, and a traceparent with a control character.
        await producer.send_and_wait(
            pipeline.results_topic,
            value=body,
            key=f"crlf-{unique[:8]}".encode(),
            headers=[("event-id", b"evt-1\r\nx-injected: 1"), ("type", b"task.succeeded")],
        )
        await producer.send_and_wait(
            pipeline.results_topic,
            value=body,
            key=f"ok-{unique[:8]}".encode(),
            headers=[
                ("event-id", f"evt-ok-{unique[:8]}".encode()),
                ("type", b"task.succeeded"),
                ("traceparent", BAD_PARENT),
            ],
        )
        [letter] = await read_topic(pipeline.bootstrap, dlq, 1, TIMEOUT_S)
        headers = dict(letter.headers)
        assert headers["webhook-attempts"] == b"3", "three attempts, as the schedule says"
        assert b"ValueError" in headers["webhook-last-error"]
        assert await metric(port, "relay_webhook_attempts_total", outcome="error") == 3

        assert await receiver.wait_for(lambda: len(receiver.answered()) == 1, TIMEOUT_S)
        [delivered] = receiver.answered().values()
        assert "traceparent" not in delivered.headers, "an invalid traceparent is not forwarded"
        assert "x-injected" not in {name.lower() for name in delivered.headers}
        assert await metric(port, "relay_trace_context_invalid_total", header="traceparent") >= 1
    finally:
        await producer.stop()
        await receiver.stop()


def _kcat_unparseable_result(pipeline: Pipeline) -> None:
    """A result record with a header key that is not UTF-8, as any librdkafka producer can."""
    argv = [require_tool("kcat", "kcat"), "-b", pipeline.bootstrap, "-P", "-t"]
    subprocess.run(
        [*argv, pipeline.results_topic, "-p", "0", b"-H\xff\xfe=x"],
        input=b'{"event_id": "bad", "type": "task.succeeded"}\n',
        check=True,
        capture_output=True,
        timeout=20,
    )


async def test_a_result_record_the_client_cannot_parse_is_skipped_and_the_rest_delivered(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    receiver = Receiver()
    await receiver.start()
    dlq = await webhook_dlq(pipeline, topics)
    env = webhook_env(dlq, RELAY_WEBHOOK_DEFAULT_URL=receiver.url)
    ids = [f"evt-{i}-{unique[:8]}" for i in range(2)]
    producer = AIOKafkaProducer(bootstrap_servers=pipeline.bootstrap)
    try:
        _, port = await pipeline.start_relay(**env)
        await producer.start()

        async def result(event_id: str) -> None:
            body = json.dumps({"event_id": event_id, "type": "task.succeeded"}).encode()
            await producer.send_and_wait(
                pipeline.results_topic, value=body, key=event_id.encode(), partition=0
            )

        await result(ids[0])
        _kcat_unparseable_result(pipeline)
        await result(ids[1])
        assert await receiver.wait_for(lambda: set(receiver.answered()) == set(ids), TIMEOUT_S)
        assert await metric(port, "relay_webhook_undecodable_results_total") == 1
    finally:
        await producer.stop()
        await receiver.stop()
