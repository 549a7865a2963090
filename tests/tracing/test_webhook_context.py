"""The trace context on the webhook path, without a service: from the result record's headers into
the delivery kept in Redis (so a retry hours later, in another process, joins the same trace),
onto the dead-letter topic and back through a replay."""

from __future__ import annotations

from types import SimpleNamespace

from relay.models import WebhookDeadLetter, WebhookDelivery
from relay.webhooks.intake import deliveries_for

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _result(headers: list[tuple[str, bytes]]) -> SimpleNamespace:
    base = [("event-id", b"evt_1"), ("type", b"task.succeeded")]
    return SimpleNamespace(key=b"k1", value=b"{}", timestamp=1, headers=base + headers)


def test_each_delivery_carries_the_results_trace_context() -> None:
    record = _result([("traceparent", PARENT.encode()), ("tracestate", b"a=1")])
    deliveries = deliveries_for(record, ["https://a.example/h", "https://b.example/h"])
    assert deliveries is not None
    assert [(d.traceparent, d.tracestate) for d in deliveries] == [(PARENT, "a=1")] * 2


def test_a_malformed_traceparent_is_not_kept() -> None:
    record = _result([("traceparent", b"00-not-a-trace"), ("tracestate", b"a=1")])
    (delivery,) = deliveries_for(record, ["https://a.example/h"]) or []
    assert (delivery.traceparent, delivery.tracestate) == (None, None)


def test_the_context_survives_redis_and_the_dead_letter_topic() -> None:
    delivery = WebhookDelivery(
        endpoint="https://a.example/h",
        event_id="evt_1",
        idempotency_key="k1",
        type="task.succeeded",
        body=b"{}",
        published_ms=1,
        traceparent=PARENT,
        tracestate="a=1",
    )
    stored = {name.encode(): value for name, value in delivery.to_fields().items()}
    assert WebhookDelivery.from_fields(stored) == delivery
    untraced = delivery.model_copy(update={"traceparent": None, "tracestate": None})
    stored = {name.encode(): value for name, value in untraced.to_fields().items()}
    assert WebhookDelivery.from_fields(stored) == untraced

    letter = WebhookDeadLetter(
        endpoint=delivery.endpoint,
        event_id=delivery.event_id,
        idempotency_key=delivery.idempotency_key,
        type=delivery.type,
        reason="exhausted",
        attempts=8,
        published_ms=1,
        traceparent=PARENT,
        tracestate="a=1",
    )
    assert ("traceparent", PARENT.encode()) in letter.headers()
    assert WebhookDeadLetter.from_record(b"k1", letter.headers()) == letter
