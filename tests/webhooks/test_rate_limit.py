"""A per-origin rate limit holds across relay processes (issue 12): with two relays and a limit
of 20/s, the receiver never sees more than 22 requests in any second, and nothing is lost."""

from __future__ import annotations

import json

from tests.support.pipeline import Pipeline
from tests.support.services import TopicFactory
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import metric, read_topic, request, webhook_dlq, webhook_env

TIMEOUT_S = 60.0
COUNT = 200


def busiest_second(times: list[float]) -> int:
    """The most requests in any sliding one-second window."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_busiest_second_slides() -> None:
    assert busiest_second([0.0, 0.5, 0.99, 1.0, 1.5]) == 3
    assert busiest_second([]) == 0


async def test_two_relays_keep_an_origin_under_its_limit(
    pipeline: Pipeline, topics: TopicFactory, unique: str
) -> None:
    receiver = Receiver()
    await receiver.start()
    dlq = await webhook_dlq(pipeline, topics)
    origin = f"http://127.0.0.1:{receiver.port}"
    env = webhook_env(
        dlq,
        RELAY_WEBHOOK_DEFAULT_URL=receiver.url,
        RELAY_WEBHOOK_RATE_LIMITS=json.dumps({origin: 20, "default": 1000}),
    )
    try:
        ports = [(await pipeline.start_relay(**env))[1] for _ in range(2)]
        keys = [f"limited-{unique[:8]}-{i}" for i in range(COUNT)]
        await pipeline.produce([request(k) for k in keys])
        results = await read_topic(pipeline.bootstrap, pipeline.results_topic, COUNT, TIMEOUT_S)
        event_ids = {json.loads(r.value)["event_id"] for r in results}
        assert len(event_ids) == COUNT
        assert await receiver.wait_for(lambda: set(receiver.answered()) == event_ids, TIMEOUT_S)

        arrivals = [d.received_at for d in receiver.deliveries]
        peak = busiest_second(arrivals)
        span = max(arrivals) - min(arrivals)
        print(
            f"\nrate limit 20/s over 2 relays: {len(arrivals)} requests in {span:.1f}s "
            f"({len(arrivals) / span:.1f}/s), busiest second {peak}"
        )
        assert peak <= 22
        assert 18 <= len(arrivals) / span <= 20.5
        limited = [
            await metric(port, "relay_webhook_rate_limited_total", origin=origin) for port in ports
        ]
        assert all(n > 0 for n in limited), "both relays were held by the shared limit"
        assert await read_topic(pipeline.bootstrap, dlq, 1, 0.5) == [], "nothing dead-lettered"
    finally:
        await receiver.stop()
