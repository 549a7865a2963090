"""Just enough of the Kafka wire protocol for the test-only auth front
(``tests/support/kafka_auth_proxy.py``): size-prefixed frames, request headers, the two SASL
responses the front answers itself, and the response rewrites that keep clients on the front.

Only the non-flexible versions are handled (ApiVersions v0-2, Metadata v0-8, FindCoordinator
v0-2, SaslHandshake v0-1, SaslAuthenticate v0-1): the ones aiokafka speaks. Anything newer that
would need a rewrite raises :class:`UnsupportedVersion` rather than pass through and let a client
slip past the front to the broker.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

API_METADATA = 3
API_FIND_COORDINATOR = 10
API_SASL_HANDSHAKE = 17
API_API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
ERROR_UNSUPPORTED_SASL_MECHANISM = 33
ERROR_SASL_AUTHENTICATION_FAILED = 58
SASL_VERSIONS = {API_SASL_HANDSHAKE: (0, 1), API_SASL_AUTHENTICATE: (0, 1)}
MAX_FRAME_BYTES = 100 * 1024 * 1024


class UnsupportedVersion(Exception):
    """A response the front would have to rewrite comes in a version it cannot parse."""


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    if not 0 <= size <= MAX_FRAME_BYTES:
        raise ValueError(f"implausible Kafka frame size {size}")
    return await reader.readexactly(size)


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


@dataclass(frozen=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    body_offset: int  # where a non-flexible request's body starts


def request_header(payload: bytes) -> RequestHeader:
    api_key, version, correlation_id, client_id_len = struct.unpack_from(">hhih", payload)
    return RequestHeader(api_key, version, correlation_id, 10 + max(client_id_len, 0))


class Cursor:
    """Reads big-endian Kafka primitives from ``data`` starting at ``pos``."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def int16(self) -> int:
        (value,) = struct.unpack_from(">h", self.data, self.pos)
        self.pos += 2
        return int(value)

    def int32(self) -> int:
        (value,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> str | None:
        length = self.int16()
        if length < 0:
            return None
        value = self.data[self.pos : self.pos + length].decode()
        self.pos += length
        return value

    def bytes_(self) -> bytes:
        length = self.int32()
        value = self.data[self.pos : self.pos + max(length, 0)]
        self.pos += max(length, 0)
        return value


def string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def handshake_mechanism(payload: bytes, header: RequestHeader) -> str:
    return Cursor(payload, header.body_offset).string() or ""


def handshake_response(header: RequestHeader, error: int, mechanisms: list[str]) -> bytes:
    body = struct.pack(">hi", error, len(mechanisms)) + b"".join(string(m) for m in mechanisms)
    return struct.pack(">i", header.correlation_id) + body


def authenticate_token(payload: bytes, header: RequestHeader) -> bytes:
    return Cursor(payload, header.body_offset).bytes_()


def authenticate_response(
    header: RequestHeader, error: int, message: str | None, token: bytes
) -> bytes:
    body = struct.pack(">h", error) + string(message) + struct.pack(">i", len(token)) + token
    if header.api_version >= 1:
        body += struct.pack(">q", 0)  # session_lifetime_ms: no re-authentication asked for
    return struct.pack(">i", header.correlation_id) + body


def rewrite_api_versions(payload: bytes, version: int) -> bytes:
    """Advertise the SASL APIs the front serves, whatever the broker behind it offers."""
    if version > 2:
        raise UnsupportedVersion(f"ApiVersions v{version}")
    cursor = Cursor(payload, 4)
    error = cursor.int16()
    entries: dict[int, tuple[int, int]] = {}
    for _ in range(cursor.int32()):
        key, low, high = cursor.int16(), cursor.int16(), cursor.int16()
        entries[key] = (low, high)
    entries.update(SASL_VERSIONS)
    body = struct.pack(">hi", error, len(entries))
    body += b"".join(struct.pack(">hhh", k, *v) for k, v in sorted(entries.items()))
    return payload[:4] + body + payload[cursor.pos :]


def rewrite_metadata(payload: bytes, version: int, host: str, port: int) -> bytes:
    """Every broker in a Metadata response becomes the front (the broker behind is single)."""
    if version > 8:
        raise UnsupportedVersion(f"Metadata v{version}")
    cursor = Cursor(payload, 4)
    if version >= 3:
        cursor.int32()  # throttle_time_ms
    head = payload[: cursor.pos]
    brokers = []
    for _ in range(cursor.int32()):
        node_id = cursor.int32()
        cursor.string()
        cursor.int32()
        entry = struct.pack(">i", node_id) + string(host) + struct.pack(">i", port)
        if version >= 1:
            entry += string(cursor.string())  # rack
        brokers.append(entry)
    return head + struct.pack(">i", len(brokers)) + b"".join(brokers) + payload[cursor.pos :]


def rewrite_find_coordinator(payload: bytes, version: int, host: str, port: int) -> bytes:
    if version > 2:
        raise UnsupportedVersion(f"FindCoordinator v{version}")
    cursor = Cursor(payload, 4)
    if version >= 1:
        cursor.int32()  # throttle_time_ms
    cursor.int16()  # error_code
    if version >= 1:
        cursor.string()  # error_message
    cursor.int32()  # node_id
    head = payload[: cursor.pos]
    cursor.string()
    cursor.int32()
    return head + string(host) + struct.pack(">i", port) + payload[cursor.pos :]


def rewrite_response(payload: bytes, api_key: int, version: int, host: str, port: int) -> bytes:
    """The broker's response as the client must see it through the front."""
    if api_key == API_METADATA:
        return rewrite_metadata(payload, version, host, port)
    if api_key == API_FIND_COORDINATOR:
        return rewrite_find_coordinator(payload, version, host, port)
    if api_key == API_API_VERSIONS:
        return rewrite_api_versions(payload, version)
    return payload
