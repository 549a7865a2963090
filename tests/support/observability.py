"""A relay under a varied load (successes, failures, rejections, dead letters, duplicates,
retries, webhooks), for tests that look at it the way operators do."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from relay.devtools.processes import ManagedProcess
from tests.support.pipeline import Pipeline
from tests.support.services import TopicFactory
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import MODEL, webhook_dlq, webhook_env

VARIED_SIM_ARGS = (
    "--queued-s 0.1 --processing-s 0.2-1.0 --failure-rate 0.2 --rate-5xx 0.1 --retry-after-s 1"
    " --stream-drop-rate 0.2"
).split()
SECRET_PROMPT_MARKER = "PROMPT-MUST-NOT-LEAK"


@dataclass
class LoadedRelay:
    relay: ManagedProcess
    port: int
    receiver: Receiver
    produced: int


async def start_loaded_relay(
    pipeline: Pipeline, topics: TopicFactory, unique: str, **env: str
) -> LoadedRelay:
    receiver = Receiver()
    await receiver.start()
    dlq = await webhook_dlq(pipeline, topics)
    relay, port = await pipeline.start_relay(
        **webhook_env(dlq, RELAY_WEBHOOK_DEFAULT_URL=receiver.url, **env)
    )
    return LoadedRelay(relay, port, receiver, 0)


async def produce_varied_load(pipeline: Pipeline, unique: str, rounds: int) -> int:
    """Produce a mix of records in rounds 0.3 s apart; returns how many were produced."""
    produced = 0
    for n in range(rounds):
        key = f"obs-{unique[:8]}-{n:03d}"
        body = {"model": MODEL, "input": {"prompt": f"{SECRET_PROMPT_MARKER} {n}", "n": 1 + n % 2}}
        batch: list[tuple[bytes | None, bytes]] = [(key.encode(), json.dumps(body).encode())]
        if n % 5 == 1:
            bad = {"model": MODEL, "input": {"prompt": SECRET_PROMPT_MARKER, "n": 99}}
            batch.append((f"{key}-bad".encode(), json.dumps(bad).encode()))
        if n % 7 == 2:
            batch.append((f"{key}-poison".encode(), b"{not json"))
        if n % 4 == 3:
            previous = f"obs-{unique[:8]}-{n - 1:03d}"
            again = {
                "model": MODEL,
                "input": {"prompt": f"{SECRET_PROMPT_MARKER} {n - 1}", "n": 1 + (n - 1) % 2},
            }
            batch.append((previous.encode(), json.dumps(again).encode()))
        await pipeline.produce(batch)
        produced += len(batch)
        await asyncio.sleep(0.3)
    return produced
