"""Every Kafka client of the relay through an authenticating front (DESIGN §8, issue 11).

The front (``tests/support/kafka_auth_proxy.py``) terminates TLS and performs SASL before it
forwards anything to noida-db; the broker's own address never reaches the relay. The harness
produces requests and reads results on the broker directly, as another team's service would;
everything the relay does goes through the front: the request consumer, the producer, the
webhook intake, ``relay webhooks replay`` and ``relay submit``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from aiokafka.conn import create_conn
from pydantic import SecretStr

from relay.kafka import kafka_client_options
from relay.settings import RelaySettings
from tests.support.cli import run_relay, wait_for_exit
from tests.support.kafka_auth_proxy import Front, kafka_auth_front
from tests.support.pipeline import Pipeline, charges_per_key
from tests.support.services import ManagedProcess, TopicFactory
from tests.support.tls import TlsFiles, write_tls_files
from tests.support.webhook_receiver import Receiver
from tests.support.webhooks import read_topic, request, verified, webhook_dlq, webhook_env

USER = "mindvideo-relay"
RESULT_TIMEOUT_S = 60.0
RELAY_RUN = [sys.executable, "-m", "relay", "run"]


def _password() -> str:
    return f"pw-{uuid.uuid4().hex}"  # unique, so finding it in a log means it leaked


def _sasl_env(front: Front, tls: TlsFiles, mechanism: str, password: str) -> dict[str, str]:
    return {
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": front.bootstrap,
        "RELAY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "RELAY_KAFKA_SASL_MECHANISM": mechanism,
        "RELAY_KAFKA_SASL_USERNAME": USER,
        "RELAY_KAFKA_SASL_PASSWORD": password,
        "RELAY_KAFKA_SSL_CAFILE": str(tls.ca),
    }


async def test_whole_pipeline_over_sasl_ssl_scram_sha_512(
    pipeline: Pipeline, topics: TopicFactory, tmp_path: Path, unique: str
) -> None:
    password = _password()
    tls = write_tls_files(tmp_path / "tls")
    dlq = await webhook_dlq(pipeline, topics)
    receiver = Receiver()
    endpoint_fixed = asyncio.Event()
    flaky = Receiver(behaviour=lambda _: 200 if endpoint_fixed.is_set() else 503)
    await receiver.start()
    await flaky.start()
    async with kafka_auth_front(
        pipeline.bootstrap, tmp_path, tls=tls, mechanisms=["SCRAM-SHA-512"], users={USER: password}
    ) as front:
        env = {
            **_sasl_env(front, tls, "SCRAM-SHA-512", password),
            **webhook_env(dlq, RELAY_WEBHOOK_RETRY_SCHEDULE="0"),  # one attempt, then dead
        }
        relay, _ = await pipeline.start_relay(**env)
        keys = [f"sasl-{unique[:8]}-{i}" for i in range(8)]
        dead_key = f"sasl-{unique[:8]}-dead"
        await pipeline.produce(
            [request(key, receiver.url) for key in keys] + [request(dead_key, flaky.url)]
        )
        results = await pipeline.results({*keys, dead_key}, RESULT_TIMEOUT_S)
        by_key = {r.key: r.value for r in results}
        assert set(by_key) == {*keys, dead_key}
        assert {by_key[k]["status"] for k in by_key} == {"succeeded"}

        assert await receiver.wait_for(lambda: len(receiver.answered()) == len(keys), 30)
        delivered = {verified(d)["idempotency_key"] for d in receiver.answered().values()}
        assert delivered == set(keys), "every result arrived as a signed webhook"

        # The failed delivery is dead-lettered through the front, replayed through it.
        (letter,) = await read_topic(pipeline.bootstrap, dlq, 1, 30)
        assert letter.key == dead_key
        endpoint_fixed.set()
        replay = await run_relay(
            ["webhooks", "replay", "--key", dead_key], pipeline.relay_env(**env), tmp_path
        )
        assert replay.returncode == 0, replay.output
        assert "scheduled=1" in replay.stdout
        assert await flaky.wait_for(lambda: len(flaky.answered()) == 1, 30)
        assert verified(next(iter(flaky.answered().values())))["idempotency_key"] == dead_key

        submit_key = f"sasl-{unique[:8]}-cli"
        submitted = await run_relay(
            ["submit", "--prompt", "a fox", "--key", submit_key, "--wait", "--timeout-s", "60"],
            pipeline.relay_env(**env),
            tmp_path,
        )
        assert submitted.returncode == 0, submitted.output
        assert json.loads(submitted.stdout)["idempotency_key"] == submit_key

        charges = await charges_per_key(pipeline)
        assert {k: charges[k] for k in (*keys, dead_key, submit_key)} == dict.fromkeys(
            (*keys, dead_key, submit_key), 1
        ), "every request charged exactly once"
        logins = Counter(front.logins())
        assert logins[f"{USER} via SCRAM-SHA-512"] >= 4, logins  # relay, replay, submit
        assert set(logins) == {f"{USER} via SCRAM-SHA-512"}
        relay.stop()
        for text in (relay.log_path.read_text(), replay.output, submitted.output, front.log_text()):
            assert password not in text, "the SASL password leaked into a log"
    await receiver.stop()
    await flaky.stop()


async def test_a_wrong_password_is_a_clear_error_everywhere(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    tls = write_tls_files(tmp_path / "tls")
    wrong = _password()
    async with kafka_auth_front(
        pipeline.bootstrap,
        tmp_path,
        tls=tls,
        mechanisms=["SCRAM-SHA-512"],
        users={USER: _password()},
    ) as front:
        env = pipeline.relay_env(**_sasl_env(front, tls, "SCRAM-SHA-512", wrong))
        relay = ManagedProcess("relay-wrong-password", RELAY_RUN, tmp_path, env)
        relay.start()
        try:
            assert await wait_for_exit(relay) == 1
        finally:
            relay.stop()
        log = relay.log_path.read_text()
        submit = await run_relay(["submit", "--prompt", "x"], env, tmp_path)
        replay = await run_relay(["webhooks", "replay", "--all"], env, tmp_path)
    assert (submit.returncode, replay.returncode) == (1, 1)  # Kafka refuses us: exit 1
    for text in (log, submit.stderr, replay.stderr):
        assert "refused the SASL SCRAM-SHA-512 login" in text, text
        assert f"RELAY_KAFKA_SASL_USERNAME='{USER}'" in text
        assert "RELAY_KAFKA_SASL_PASSWORD" in text
        assert "Traceback" not in text
        assert wrong not in text
    assert front.logins() == []


async def test_a_plaintext_relay_is_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    tls = write_tls_files(tmp_path / "tls")
    async with kafka_auth_front(
        pipeline.bootstrap, tmp_path, tls=tls, mechanisms=["SCRAM-SHA-512"], users={USER: "pw"}
    ) as front:
        env = pipeline.relay_env(RELAY_KAFKA_BOOTSTRAP_SERVERS=front.bootstrap)
        relay = ManagedProcess("relay-plaintext", RELAY_RUN, tmp_path, env)
        relay.start()
        try:
            assert await wait_for_exit(relay) == 1
        finally:
            relay.stop()
    log = relay.log_path.read_text()
    assert "could not start" in log
    assert "RELAY_KAFKA_SECURITY_PROTOCOL is PLAINTEXT" in log
    assert "Traceback" not in log
    assert front.logins() == []


async def test_mutual_tls(pipeline: Pipeline, tmp_path: Path, unique: str) -> None:
    tls = write_tls_files(tmp_path / "tls")
    async with kafka_auth_front(
        pipeline.bootstrap, tmp_path, tls=tls, require_client_cert=True
    ) as front:
        anonymous = {
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": front.bootstrap,
            "RELAY_KAFKA_SECURITY_PROTOCOL": "SSL",
            "RELAY_KAFKA_SSL_CAFILE": str(tls.ca),
        }
        client_cert = {
            **anonymous,
            "RELAY_KAFKA_SSL_CERTFILE": str(tls.client_cert),
            "RELAY_KAFKA_SSL_KEYFILE": str(tls.client_key),
        }
        await pipeline.start_relay(RELAY_ROLE="requests", **client_cert)
        keys = [f"mtls-{unique[:8]}-{i}" for i in range(3)]
        await pipeline.produce([request(key) for key in keys])
        results = await pipeline.results(set(keys), RESULT_TIMEOUT_S)
        assert {r.key for r in results} == set(keys)
        refused = await run_relay(
            ["submit", "--prompt", "x"], pipeline.relay_env(**anonymous), tmp_path
        )
    assert refused.returncode == 1
    assert "RELAY_KAFKA_SSL_CERTFILE and RELAY_KAFKA_SSL_KEYFILE" in refused.stderr
    assert "Traceback" not in refused.stderr


async def test_sasl_plain_and_scram_sha_256_over_tls(
    pipeline: Pipeline, tmp_path: Path, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    tls = write_tls_files(tmp_path / "tls")
    password = _password()
    async with kafka_auth_front(
        pipeline.bootstrap,
        tmp_path,
        tls=tls,
        mechanisms=["PLAIN", "SCRAM-SHA-256"],
        users={USER: password},
    ) as front:
        for mechanism in ("PLAIN", "SCRAM-SHA-256"):
            env = pipeline.relay_env(**_sasl_env(front, tls, mechanism, password))
            key = f"{mechanism.lower()}-{unique[:8]}"
            submitted = await run_relay(["submit", "--prompt", "x", "--key", key], env, tmp_path)
            assert submitted.returncode == 0, submitted.output
        # A PLAIN token is the password: aiokafka's DEBUG log of every request must not show it.
        options = kafka_client_options(
            RelaySettings(
                kafka_bootstrap_servers=front.bootstrap,
                kafka_security_protocol="SASL_SSL",
                kafka_sasl_mechanism="PLAIN",
                kafka_sasl_username=USER,
                kafka_sasl_password=SecretStr(password),
                kafka_ssl_cafile=tls.ca,
            )
        )
        host, port = front.bootstrap.rsplit(":", 1)
        security = {k: v for k, v in options.items() if k != "bootstrap_servers"}
        with caplog.at_level(logging.DEBUG, logger="aiokafka.conn"):
            conn = await create_conn(host, int(port), **security)
            conn.close()
        logins = set(front.logins())
    assert "SaslAuthenticateRequest(<hidden>)" in caplog.text
    assert password not in caplog.text
    assert logins == {f"{USER} via PLAIN", f"{USER} via SCRAM-SHA-256"}
    records = await read_topic(pipeline.bootstrap, pipeline.requests_topic, 2, 30)
    assert {r.key for r in records} == {f"plain-{unique[:8]}", f"scram-sha-256-{unique[:8]}"}


async def test_the_certificate_must_name_the_broker_unless_told_otherwise(
    pipeline: Pipeline, tmp_path: Path, unique: str
) -> None:
    tls = write_tls_files(tmp_path / "tls", "kafka.internal")  # not the address we dial
    async with kafka_auth_front(pipeline.bootstrap, tmp_path, tls=tls) as front:
        env = {
            "RELAY_KAFKA_BOOTSTRAP_SERVERS": front.bootstrap,
            "RELAY_KAFKA_SECURITY_PROTOCOL": "SSL",
            "RELAY_KAFKA_SSL_CAFILE": str(tls.ca),
        }
        checked = await run_relay(["submit", "--prompt", "x"], pipeline.relay_env(**env), tmp_path)
        unchecked = await run_relay(
            ["submit", "--prompt", "x", "--key", f"nocheck-{unique[:8]}"],
            pipeline.relay_env(**env, RELAY_KAFKA_SSL_CHECK_HOSTNAME="false"),
            tmp_path,
        )
        foreign_ca = write_tls_files(tmp_path / "other")
        untrusted = await run_relay(
            ["submit", "--prompt", "x"],
            pipeline.relay_env(**{**env, "RELAY_KAFKA_SSL_CAFILE": str(foreign_ca.ca)}),
            tmp_path,
        )
    assert checked.returncode == 1
    assert "RELAY_KAFKA_SSL_CHECK_HOSTNAME=false" in checked.stderr
    assert unchecked.returncode == 0, unchecked.output
    assert untrusted.returncode == 1
    assert "RELAY_KAFKA_SSL_CAFILE must name the CA that signed it" in untrusted.stderr
