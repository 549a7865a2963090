"""Origins without a recent success ("unproven": new, or only hanging or failing) share a capped
number of delivery slots, so a producer naming many origins that never answer cannot take the
slots proven origins need (admission and settings; the end-to-end test is in
test_delivery_faults.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relay.settings import RelaySettings
from relay.webhooks.admission import PROVEN_FOR_S, EndpointAdmission
from relay.webhooks.breaker import BreakerConfig, EndpointGuards


async def test_unproven_origins_share_the_cap_and_proven_ones_do_not_count() -> None:
    now = [1000.0]
    guards = EndpointGuards(BreakerConfig(), max_in_flight_per_endpoint=10)
    admission = EndpointAdmission(
        guards, None, max_waiting=10, max_unproven=2, clock=lambda: now[0]
    )
    admission.succeeded("https://proven.example")
    assert (await admission.admit("https://a.example")).go
    assert (await admission.admit("https://b.example")).go
    refused = await admission.admit("https://c.example")
    assert (refused.go, refused.reason) == (False, "unproven")
    assert admission.unproven_in_flight == 2
    for _ in range(5):
        assert (await admission.admit("https://proven.example")).go, "proven: not capped"
    admission.release("https://a.example")
    assert (await admission.admit("https://c.example")).go, "a freed unproven slot is reused"
    now[0] += PROVEN_FOR_S
    assert not admission.proven("https://proven.example"), "a success long ago proves nothing"
    assert not (await admission.admit("https://proven.example")).go


def test_the_cap_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert RelaySettings().webhook_unproven_in_flight == 100, "half of the 200 slots"
    monkeypatch.setenv("RELAY_WEBHOOK_MAX_UNPROVEN_IN_FLIGHT", "20")
    assert RelaySettings().webhook_unproven_in_flight == 20
    for bad in ("0", "200", "-1", "ten", "1.5"):
        monkeypatch.setenv("RELAY_WEBHOOK_MAX_UNPROVEN_IN_FLIGHT", bad)
        with pytest.raises(ValidationError):
            RelaySettings()
