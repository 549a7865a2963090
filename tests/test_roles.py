"""RELAY_ROLE splits a relay in two (DESIGN §8): ``requests`` processes run the request pipeline
and no dispatcher, ``webhooks`` processes deliver webhooks and never talk to MindVideo (so they
are ready without its credentials). Together they do what one ``all`` process does."""

from __future__ import annotations

import json

from tests.support.pipeline import Pipeline
from tests.support.services import TopicFactory
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import metric, request, verified, webhook_dlq, webhook_env


async def test_requests_and_webhooks_roles_split_the_work(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    dlq = await webhook_dlq(pipeline, topics)
    receiver = Receiver()
    await receiver.start()
    try:
        _, requests_port = await pipeline.start_relay(RELAY_ROLE="requests", **webhook_env(dlq))
        webhooks, webhooks_port = await pipeline.start_relay(
            RELAY_ROLE="webhooks",
            RELAY_MINDVIDEO_API_KEY="",  # never used: this process does not talk to MindVideo
            RELAY_MINDVIDEO_BASE_URL="http://127.0.0.1:9",
            **webhook_env(dlq),
        )
        status, body = await pipeline.relay_get(webhooks_port, "/readyz")
        assert status == 200, body
        assert set(json.loads(body)["checks"]) == {"redis", "webhooks"}

        keys = [f"roles-{unique[:8]}-{i}" for i in range(6)]
        await pipeline.produce([request(key, receiver.url) for key in keys])
        results = await pipeline.results(set(keys), 60)
        assert {r.key for r in results} == set(keys)
        assert await receiver.wait_for(lambda: len(receiver.answered()) == len(keys), 30)
        assert {verified(d)["idempotency_key"] for d in receiver.answered().values()} == set(keys)

        assert await metric(requests_port, "relay_tasks_submitted_total") == len(keys)
        assert await metric(requests_port, "relay_webhook_attempts_total") == 0
        assert await metric(webhooks_port, "relay_tasks_submitted_total") == 0
        assert await metric(
            webhooks_port, "relay_webhook_attempts_total", outcome="success"
        ) == len(keys)
        assert webhooks.stop() == 0, "a webhooks-only relay stops cleanly on SIGTERM"
        log = webhooks.log_path.read_text()
        assert '"role": "webhooks"' in log
        assert "MindVideo" not in log
        assert "credential" not in log
    finally:
        await receiver.stop()
