"""The test-only Kafka auth front is itself tested: its SCRAM and PLAIN servers against
aiokafka's own client side, and its response rewrites against aiokafka's protocol structs (an
encoder we did not write). No service needed."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiokafka.conn import ScramAuthenticator
from aiokafka.protocol.coordination import FindCoordinatorResponse_v0, FindCoordinatorResponse_v1
from aiokafka.protocol.metadata import MetadataResponse_v1, MetadataResponse_v5

from tests.support import kafka_wire as wire
from tests.support.scram import AuthenticationFailed, Users

USERS = Users({"relay": "correct horse", "ops,=team": "battery staple"})


def _scram_login(mechanism: str, user: str, password: str) -> None:
    """aiokafka's client exchange against our server; raises if either side refuses."""
    client = ScramAuthenticator(
        loop=None, sasl_plain_username=user, sasl_plain_password=password, sasl_mechanism=mechanism
    )
    server = USERS.exchange(mechanism)
    answer = None
    while (step := client._step(answer)) is not None:
        token, _ = step
        answer = server.step(token)
    assert server.done
    assert server.username == user


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_scram_server_accepts_the_right_password_only(mechanism: str) -> None:
    _scram_login(mechanism, "relay", "correct horse")
    _scram_login(mechanism, "ops,=team", "battery staple")  # escaped as =2C and =3D
    with pytest.raises(AuthenticationFailed, match="invalid credentials") as failed:
        _scram_login(mechanism, "relay", "correct horse!")
    assert "correct horse" not in str(failed.value)
    with pytest.raises(AuthenticationFailed):
        _scram_login(mechanism, "nobody", "correct horse")


def test_scram_server_refuses_a_replayed_or_foreign_nonce() -> None:
    server = USERS.exchange("SCRAM-SHA-512")
    server_first = server.step(b"n,,n=relay,r=abc").decode()
    nonce = dict(item.split("=", 1) for item in server_first.split(","))["r"]
    assert nonce.startswith("abc")
    assert len(nonce) > len("abc")
    with pytest.raises(AuthenticationFailed, match="nonce"):
        server.step(b"c=biws,r=abcXYZ,p=AAAA")


def test_plain_server() -> None:
    plain = USERS.exchange("PLAIN")
    assert plain.step(b"\0relay\0correct horse") == b""
    assert plain.done
    assert plain.username == "relay"
    for bad in (b"\0relay\0wrong", b"relay\0correct horse", b"admin\0relay\0correct horse"):
        with pytest.raises(AuthenticationFailed):
            USERS.exchange("PLAIN").step(bad)


def _response(struct_: Any, correlation_id: int = 7) -> bytes:
    encoded: bytes = struct_.encode()
    return struct.pack(">i", correlation_id) + encoded


@pytest.mark.parametrize("response_class", [MetadataResponse_v1, MetadataResponse_v5])
def test_metadata_points_every_broker_at_the_front(response_class: Any) -> None:
    partition = (
        (0, 0, 1, [1], [1]) if response_class is MetadataResponse_v1 else (0, 0, 1, [1], [1], [])
    )
    fields = [
        [(1, "127.0.0.1", 9092, "rack-a"), (2, "broker-2", 9093, None)],
        *(("cluster-x",) if response_class is MetadataResponse_v5 else ()),
        1,
        [(0, "topic", False, [partition])],
    ]
    if response_class is MetadataResponse_v5:
        fields.insert(0, 0)  # throttle_time_ms
    original = response_class(*fields)
    rewritten = wire.rewrite_metadata(
        _response(original), response_class.API_VERSION, "front", 4242
    )
    assert rewritten[:4] == struct.pack(">i", 7)
    decoded = response_class.decode(rewritten[4:])
    assert decoded.brokers == [(1, "front", 4242, "rack-a"), (2, "front", 4242, None)]
    assert decoded.topics == original.topics
    assert decoded.controller_id == 1


def test_find_coordinator_points_at_the_front() -> None:
    v0 = wire.rewrite_find_coordinator(
        _response(FindCoordinatorResponse_v0(0, 1, "b", 9)), 0, "f", 5
    )
    assert FindCoordinatorResponse_v0.decode(v0[4:]).host == "f"
    v1 = FindCoordinatorResponse_v1(0, 0, None, 1, "broker", 9092)
    decoded = FindCoordinatorResponse_v1.decode(
        wire.rewrite_find_coordinator(_response(v1), 1, "f", 5)[4:]
    )
    assert (decoded.coordinator_id, decoded.host, decoded.port) == (1, "f", 5)


def test_api_versions_advertise_the_sasl_apis() -> None:
    body = struct.pack(">hi", 0, 2) + struct.pack(">hhh", 3, 0, 12) + struct.pack(">hhh", 17, 0, 0)
    rewritten = wire.rewrite_api_versions(struct.pack(">i", 1) + body, 0)
    cursor = wire.Cursor(rewritten, 4)
    assert cursor.int16() == 0
    entries = {cursor.int16(): (cursor.int16(), cursor.int16()) for _ in range(cursor.int32())}
    assert entries == {3: (0, 12), 17: (0, 1), 36: (0, 1)}
    with pytest.raises(wire.UnsupportedVersion):
        wire.rewrite_metadata(b"\0\0\0\1", 9, "f", 1)
