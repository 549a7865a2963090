"""W3C Trace Context as the relay carries it: a request record's ``traceparent`` and
``tracestate`` headers, checked, on their way to the result record and the webhook.

Pure Python, no OpenTelemetry: it is used whether or not tracing is on. With tracing off the
relay is a transparent hop (W3C Trace Context: a participant that does not trace forwards the
headers unchanged), so a producer's trace still reaches the webhook receiver. Headers come from
producers, so only a well-formed ``traceparent`` is carried, and a ``tracestate`` only beside one,
within ``MAX_TRACESTATE_CHARS`` printable ASCII characters; anything else is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# W3C Trace Context: vendors propagate at least 512 characters of tracestate.
MAX_TRACESTATE_CHARS = 512
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A valid ``traceparent`` and, optionally, its ``tracestate``."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def span_id(self) -> str:
        return self.traceparent[36:52]

    @classmethod
    def parse(cls, traceparent: str | None, tracestate: str | None = None) -> TraceContext | None:
        """The context, or ``None`` when ``traceparent`` is missing or malformed (then the
        tracestate means nothing either, as the W3C specification says)."""
        if not traceparent or not valid_traceparent(traceparent):
            return None
        state = tracestate.strip() if tracestate else None
        if state and (len(state) > MAX_TRACESTATE_CHARS or not _PRINTABLE.fullmatch(state)):
            state = None
        return cls(traceparent, state or None)

    @classmethod
    def from_headers(cls, headers: Iterable[tuple[str, bytes]] | None) -> TraceContext | None:
        """From Kafka record headers (the first ``traceparent`` and ``tracestate`` count)."""
        if not headers:
            return None
        parent: bytes | None = None
        state: bytes | None = None
        for name, value in headers:
            lowered = name.lower()
            if lowered == TRACEPARENT and parent is None:
                parent = value
            elif lowered == TRACESTATE and state is None:
                state = value
        if parent is None:
            return None
        return cls.parse(_ascii(parent), _ascii(state) if state is not None else None)

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """As Kafka record headers."""
        headers = [(TRACEPARENT, self.traceparent.encode())]
        if self.tracestate:
            headers.append((TRACESTATE, self.tracestate.encode()))
        return headers

    def add_to(self, headers: MutableMapping[str, str]) -> None:
        """Set the HTTP headers ``traceparent`` (and ``tracestate``) in ``headers``."""
        headers[TRACEPARENT] = self.traceparent
        if self.tracestate:
            headers[TRACESTATE] = self.tracestate


def valid_traceparent(value: str) -> bool:
    """A ``traceparent`` per W3C Trace Context: version 00 exactly, a later version by its first
    four fields (it may add more), never version ff, never an all-zero trace or span id."""
    match = _TRACEPARENT.match(value)
    if match is None:
        return False
    version, trace_id, span_id, _ = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return False
    if version == "00":
        return len(value) == match.end()
    return len(value) == match.end() or value[match.end()] == "-"


def _ascii(value: bytes) -> str | None:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None
