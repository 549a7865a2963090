"""The W3C trace context the relay carries from a producer's record to the result and the webhook:
only well-formed headers travel (they come from producers)."""

from __future__ import annotations

import pytest

from relay.tracing.context import MAX_TRACESTATE_CHARS, TraceContext, valid_traceparent

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (PARENT, True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", True),  # not sampled
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", True),  # a later version
        (PARENT + "-extra", False),  # version 00 has exactly four fields
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", False),  # uppercase
        ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", False),  # short trace id
        ("", False),
        ("garbage", False),
    ],
)
def test_traceparent_validation_follows_w3c(value: str, valid: bool) -> None:
    assert valid_traceparent(value) is valid


def test_kafka_headers_in_and_out() -> None:
    headers = [("content-type", b"x"), ("traceparent", PARENT.encode()), ("tracestate", b"a=1")]
    context = TraceContext.from_headers(headers)
    assert context == TraceContext(PARENT, "a=1")
    assert context.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert context.span_id == "00f067aa0ba902b7"
    assert context.kafka_headers() == [("traceparent", PARENT.encode()), ("tracestate", b"a=1")]
    http: dict[str, str] = {"webhook-id": "evt"}
    context.add_to(http)
    assert http == {"webhook-id": "evt", "traceparent": PARENT, "tracestate": "a=1"}


def test_what_producers_must_not_smuggle_through() -> None:
    assert TraceContext.from_headers(None) is None
    assert TraceContext.from_headers([("tracestate", b"a=1")]) is None, "no parent, no state"
    assert TraceContext.from_headers([("traceparent", b"\xff" * 55)]) is None
    injected = TraceContext.parse(PARENT, "a=1\r\nx-evil: 1")
    assert injected == TraceContext(PARENT, None), "a tracestate with control characters is dropped"
    too_long = TraceContext.parse(PARENT, "a=" + "x" * MAX_TRACESTATE_CHARS)
    assert too_long == TraceContext(PARENT, None)
    first = TraceContext.from_headers(
        [("traceparent", PARENT.encode()), ("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16)]
    )
    assert first == TraceContext(PARENT), "the first traceparent counts"
    assert TraceContext(PARENT).kafka_headers() == [("traceparent", PARENT.encode())]


LATER = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "value",
    [
        LATER + "-" + "a" * 900_000,  # huge: it would make the result too large to publish
        LATER + "-\r\nx-evil: 1",  # control characters: an HTTP request cannot carry them
        LATER + "-\x00",
        LATER + "x",  # a later version's extra fields follow a dash
        PARENT.replace("-01", "-0g"),  # flags are hex
        " " + PARENT,
    ],
)
def test_hostile_traceparents_are_dropped_and_reported(value: str) -> None:
    reported: list[str] = []
    assert TraceContext.parse(value, "a=1", reported.append) is None
    assert reported == ["traceparent"]


def test_a_later_version_travels_as_its_four_fields() -> None:
    context = TraceContext.parse(LATER + "-extra-fields")
    assert context == TraceContext(LATER)


@pytest.mark.parametrize(
    ("state", "carried"),
    [
        ("a=1", "a=1"),
        ("congo=t61rcWkgMzE, rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
        ("tenant@vendor=x,,b=2 ", "tenant@vendor=x,b=2"),  # empty members and spaces go
        ("a=1,a=2", None),  # a key twice
        ("A=1", None),  # keys are lowercase
        ("a=1=2", None),  # "=" is not a value character
        ("a=", None),  # a value has at least one character
        ("a=1 ,b", None),  # a member without "="
        ("a=\x7f", None),
        (",".join(f"k{i}=v" for i in range(33)), None),  # more than 32 members
        ("a=" + "x" * 300, None),  # a value over 256 characters
    ],
)
def test_tracestate_follows_the_w3c_list_member_rules(state: str, carried: str | None) -> None:
    reported: list[str] = []
    context = TraceContext.parse(PARENT, state, reported.append)
    assert context == TraceContext(PARENT, carried)
    assert reported == ([] if carried else ["tracestate"])


def test_headers_that_are_not_ascii_are_reported() -> None:
    reported: list[str] = []
    headers = [("traceparent", PARENT.encode()), ("tracestate", "a=é".encode())]
    assert TraceContext.from_headers(headers, reported.append) == TraceContext(PARENT)
    assert TraceContext.from_headers([("traceparent", b"\xff" * 55)], reported.append) is None
    assert reported == ["tracestate", "traceparent"]
