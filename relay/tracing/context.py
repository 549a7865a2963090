"""W3C Trace Context as the relay carries it: a request record's ``traceparent`` and
``tracestate`` headers, checked, on their way to the result record and the webhook.

Pure Python, no OpenTelemetry: it is used whether or not tracing is on. With tracing off the
relay is a transparent hop (W3C Trace Context: a participant that does not trace forwards the
headers unchanged), so a producer's trace still reaches the webhook receiver. Headers come from
producers, so they are checked strictly before they go anywhere (a result record, a webhook
request): a ``traceparent`` must be ``version-traceid-parentid-flags`` in lowercase hex with the
W3C lengths (a later version's extra fields are dropped, and the whole header is at most
``MAX_TRACEPARENT_CHARS``); a ``tracestate`` only travels beside a valid ``traceparent``, within
``MAX_TRACESTATE_CHARS``, as at most ``MAX_TRACESTATE_MEMBERS`` W3C list-members with distinct
keys. Anything else is dropped, and reported to ``on_invalid`` (counted in
``relay_trace_context_invalid_total{header}``): a header cannot make a record too large to publish
or a webhook request impossible to build.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# A version-00 traceparent is 55 characters; a later version may add fields, not kilobytes.
MAX_TRACEPARENT_CHARS = 256
TRACEPARENT_CHARS = 55
# W3C Trace Context: vendors propagate at least 512 characters and 32 list-members of tracestate.
MAX_TRACESTATE_CHARS = 512
MAX_TRACESTATE_MEMBERS = 32
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
# What may follow the four fields in a later version: more dash-separated printable fields.
_LATER_FIELDS = re.compile(r"(-[\x21-\x7e]*)*")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
# tracestate list-member: key "=" value (W3C Trace Context §3.3.1.3).
_KEY = r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"({_KEY})=({_VALUE})")

InvalidHeader = Callable[[str], None]


def _ignore(_header: str) -> None:
    return None


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A valid ``traceparent`` and, optionally, its valid ``tracestate``."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def span_id(self) -> str:
        return self.traceparent[36:52]

    @classmethod
    def parse(
        cls,
        traceparent: str | None,
        tracestate: str | None = None,
        on_invalid: InvalidHeader = _ignore,
    ) -> TraceContext | None:
        """The context, or ``None`` when ``traceparent`` is missing or malformed (then the
        tracestate means nothing either, as the W3C specification says). A malformed header is
        reported to ``on_invalid`` by name; a malformed ``tracestate`` is dropped on its own."""
        if traceparent is None:
            return None
        if not valid_traceparent(traceparent):
            on_invalid(TRACEPARENT)
            return None
        state: str | None = None
        if tracestate is not None and tracestate.strip(" \t"):
            state = normal_tracestate(tracestate)
            if state is None:
                on_invalid(TRACESTATE)
        return cls(traceparent[:TRACEPARENT_CHARS], state)

    @classmethod
    def from_headers(
        cls,
        headers: Iterable[tuple[str, bytes]] | None,
        on_invalid: InvalidHeader = _ignore,
    ) -> TraceContext | None:
        """From Kafka record headers (the first ``traceparent`` and ``tracestate`` count);
        a header that is not ASCII is malformed."""
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
        text = _ascii(parent)
        if text is None:
            on_invalid(TRACEPARENT)
            return None
        state_text = _ascii(state) if state is not None else None
        if state is not None and state_text is None:
            on_invalid(TRACESTATE)
        return cls.parse(text, state_text, on_invalid)

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
    four fields followed by more dash-separated printable fields (which the relay drops), never
    version ff, never an all-zero trace or span id, never longer than ``MAX_TRACEPARENT_CHARS``."""
    if len(value) > MAX_TRACEPARENT_CHARS:
        return False
    match = _TRACEPARENT.match(value)
    if match is None:
        return False
    version, trace_id, span_id, _ = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return False
    if version == "00":
        return len(value) == match.end()
    return _LATER_FIELDS.fullmatch(value, match.end()) is not None


def normal_tracestate(value: str) -> str | None:
    """``value`` as list-members joined by ``,`` (optional whitespace and empty members
    removed), or ``None`` when it breaks a W3C rule: too long, a malformed member, more than
    ``MAX_TRACESTATE_MEMBERS`` members, a key twice."""
    if len(value) > MAX_TRACESTATE_CHARS:
        return None
    members: list[str] = []
    keys: set[str] = set()
    for raw in value.split(","):
        member = raw.strip(" \t")
        if not member:
            continue
        match = _MEMBER.fullmatch(member)
        if match is None or match.group(1) in keys:
            return None
        keys.add(match.group(1))
        members.append(member)
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    return ",".join(members)


def _ascii(value: bytes) -> str | None:
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None
