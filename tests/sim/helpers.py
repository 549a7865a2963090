"""Helpers shared by the simulator tests: a hand-driven clock, requests, an SSE reader."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient

from relay.schemas import SEEDANCE_4_0

KEY = "mv_test_local"
OTHER_KEY = "mv_live_other"
START_S = 1_795_000_000.0
PANDA = {"prompt": "a panda in a bamboo forest", "size": "1:1", "resolution": "2K", "n": 1}

SimClient = TestClient[web.Request, web.Application]


class FakeClock:
    """A clock tests move by hand, so timelines never need a real sleep."""

    def __init__(self, start_s: float = START_S) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def submit(
    client: SimClient,
    model_input: Any = None,
    *,
    key: str = KEY,
    idempotency_key: str | None = None,
    model: str = SEEDANCE_4_0,
) -> aiohttp.ClientResponse:
    headers = auth(key)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    body = {"model": model, "input": PANDA if model_input is None else model_input}
    return await client.post("/api/v1/tasks", json=body, headers=headers)


async def submit_ok(client: SimClient, model_input: Any = None, **kwargs: Any) -> dict[str, Any]:
    resp = await submit(client, model_input, **kwargs)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def get_json(client: SimClient, path: str, **kwargs: Any) -> dict[str, Any]:
    resp = await client.get(path, **kwargs)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def ledger(client: SimClient) -> dict[str, Any]:
    return await get_json(client, "/_sim/ledger")


@dataclass
class Stream:
    """What an SSE response carried: events, comments, ``retry:`` lines, and if it ended cleanly."""

    events: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)
    complete: bool = True

    @property
    def statuses(self) -> list[str]:
        return [str(event["event"]) for event in self.events]

    @property
    def ids(self) -> list[int]:
        return [int(event["id"]) for event in self.events]


def parse_sse(text: str, *, complete: bool = True) -> Stream:
    """A strict reading of the simulator's own output (one ``data:`` line per event)."""
    stream = Stream(complete=complete)
    for block in text.split("\n\n"):
        current: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line:
                continue
            if line.startswith(":"):
                stream.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(": ")
            if name == "retry":
                stream.retries.append(int(value))
            elif name == "data":
                current["data"] = json.loads(value)
            else:
                current[name] = value
        if current:
            stream.events.append(current)
    return stream


async def read_stream(resp: aiohttp.ClientResponse) -> Stream:
    """Read an event stream to its end; a connection cut mid-body yields ``complete=False``."""
    chunks: list[bytes] = []
    complete = True
    try:
        async for chunk in resp.content.iter_any():
            chunks.append(chunk)
    except aiohttp.ClientPayloadError:
        complete = False
    return parse_sse(b"".join(chunks).decode(), complete=complete)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR, after checking signature, CRCs and pixel data."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc
        chunks[kind] = body
        pos += 12 + length
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour) == (8, 2)
    assert len(zlib.decompress(chunks[b"IDAT"])) == height * (1 + 3 * width)
    return width, height
