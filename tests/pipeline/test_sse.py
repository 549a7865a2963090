"""The SSE parser accepts what servers send: CRLF, CR, comments, multi-line data, split bytes."""

from __future__ import annotations

import pytest

from relay.pipeline.sse import ServerSentEvent, SSEParser

STREAM = (
    "\ufeffretry: 1000\r\n"
    ": keep-alive\r\n"
    'id: 1\r\nevent: queued\r\ndata: {"status":\r\ndata:  "queued"}\r\n\r\n'
    "id:2\nevent:processing\ndata:x\n\n"
    "id: 3\revent: succeeded\rdata: done\r\r"
    "data\n\n"
    "event: ignored-without-data\n\n"
    "unknown: field\nid: 4\ndata: last\n\n"
).encode()


def _parse(chunks: list[bytes]) -> list[ServerSentEvent]:
    parser = SSEParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def _expected() -> list[ServerSentEvent]:
    return [
        ServerSentEvent("queued", '{"status":\n "queued"}', "1"),
        ServerSentEvent("processing", "x", "2"),
        ServerSentEvent("succeeded", "done", "3"),
        ServerSentEvent("message", "", "3"),
        ServerSentEvent("message", "last", "4"),
    ]


def test_whole_stream() -> None:
    assert _parse([STREAM]) == _expected()


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_stream_split_anywhere(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert _parse(chunks) == _expected()


def test_multibyte_utf8_split_across_chunks() -> None:
    payload = "data: 熊猫 🐼\n\n".encode()
    chunks = [payload[i : i + 1] for i in range(len(payload))]
    assert _parse(chunks) == [ServerSentEvent("message", "熊猫 🐼", None)]


def test_incomplete_event_is_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 9\nevent: succeeded\ndata: {}") == []
    assert parser.last_event_id == "9"
