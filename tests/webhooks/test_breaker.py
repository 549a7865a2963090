"""The per-origin circuit breaker on an injected clock: dead endpoints are shed, degraded ones
are not; half-open measures again; cool-downs grow and reset; origins, not URLs, are the key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relay.origins import OriginLabels, origin_of, parse_origin
from relay.settings import RelaySettings
from relay.webhooks.breaker import (
    AttemptHealth,
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    EndpointGuards,
)

CONFIG = BreakerConfig(
    unanswered_ratio=0.8,
    min_requests=10,
    window_s=60,
    no_success_s=60,
    cooldown_s=30,
    max_cooldown_s=100,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(breaker: CircuitBreaker) -> BreakerState:
    """Read through a call so mypy does not narrow the state across the breaker's methods."""
    return breaker.state


def _breaker(config: BreakerConfig = CONFIG) -> tuple[CircuitBreaker, Clock, list[str]]:
    clock = Clock()
    changes: list[str] = []
    breaker = CircuitBreaker(config, clock, lambda _old, new, _why: changes.append(new.value))
    return breaker, clock, changes


def test_a_degraded_endpoint_that_answers_errors_stays_closed() -> None:
    """The issue's receiver: every webhook fails twice with a 500, then succeeds. A first burst
    of 80 errors before any success must not trip it, nor a steady 2-in-3 error rate."""
    breaker, clock, changes = _breaker()
    for _ in range(80):
        assert breaker.allow()
        breaker.record("error", "HTTP 500")
        clock.now += 0.03
    for _ in range(600):
        health: AttemptHealth
        for health in ("error", "error", "ok"):
            assert breaker.allow()
            breaker.record(health)
        clock.now += 0.5
    assert _state(breaker) is BreakerState.CLOSED
    assert changes == []


def test_a_busy_endpoint_with_half_its_connections_failing_stays_closed() -> None:
    breaker, clock, _ = _breaker()
    for i in range(2000):
        breaker.record("unanswered" if i % 2 else "ok")
        clock.now += 0.05
    assert _state(breaker) is BreakerState.CLOSED


def test_an_endpoint_nobody_answers_opens_after_min_requests() -> None:
    breaker, _, changes = _breaker()
    for _ in range(9):
        breaker.record("unanswered", "connection refused")
    assert _state(breaker) is BreakerState.CLOSED, "below the minimum volume"
    breaker.record("unanswered", "connection refused")
    assert _state(breaker) is BreakerState.OPEN
    assert changes == ["open"]
    assert breaker.last_error == "connection refused"
    assert not breaker.allow()
    assert breaker.blocked_for_s() == 30


def test_errors_alone_open_it_once_nothing_succeeded_for_the_period() -> None:
    breaker, clock, _ = _breaker()
    for _ in range(59):
        breaker.record("error")
        clock.now += 1
    assert _state(breaker) is BreakerState.CLOSED, "58 s without success: not yet"
    clock.now += 1
    breaker.record("error")
    assert _state(breaker) is BreakerState.OPEN, "a 503 wall for 60 s is a dead endpoint"


def test_one_success_restarts_the_no_success_clock() -> None:
    breaker, clock, _ = _breaker()
    for i in range(300):
        breaker.record("ok" if i % 50 == 49 else "error")
        clock.now += 1
    assert _state(breaker) is BreakerState.CLOSED


def _trip(breaker: CircuitBreaker) -> None:
    for _ in range(10):
        breaker.record("unanswered")


def test_half_open_sends_one_probe_then_a_trial_and_closes_when_answered() -> None:
    breaker, clock, changes = _breaker()
    _trip(breaker)
    clock.now += 30
    assert breaker.blocked_for_s() == 0
    assert breaker.allow(), "the probe"
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow(), "one probe at a time"
    assert breaker.blocked_for_s() > 0
    breaker.record("ok")
    assert _state(breaker) is BreakerState.HALF_OPEN, "a probe alone does not measure a ratio"
    admitted = sum(breaker.allow() for _ in range(20))
    assert admitted == 9, "the trial: min_requests attempts including the probe"
    breaker.record("error")  # answered, if badly: the endpoint is there
    assert _state(breaker) is BreakerState.HALF_OPEN
    breaker.record("ok")
    assert _state(breaker) is BreakerState.CLOSED, "3 of 10 answered: < 80 % can be unanswered"
    assert changes == ["open", "half_open", "closed"]
    assert breaker.allow()


def test_a_failed_trial_reopens() -> None:
    breaker, clock, changes = _breaker()
    _trip(breaker)
    clock.now += 30
    assert breaker.allow()
    breaker.record("ok")
    for _ in range(8):
        assert breaker.allow()
        breaker.record("unanswered")
    assert _state(breaker) is BreakerState.OPEN
    assert changes[-1] == "open"


def test_failed_probes_double_the_cooldown_up_to_the_cap_and_a_success_resets_it() -> None:
    breaker, clock, _ = _breaker()
    _trip(breaker)
    cooldowns = [breaker.cooldown_s]
    probes = 0
    for _ in range(4):
        clock.now += breaker.cooldown_s - 0.1
        assert not breaker.allow(), "no probe before the cool-down ends"
        clock.now += 0.1
        assert breaker.allow()
        probes += 1
        breaker.record("unanswered")
        cooldowns.append(breaker.cooldown_s)
    assert cooldowns == [30, 60, 100, 100, 100]
    assert probes == 4, "exactly one probe per cool-down"
    clock.now += 100
    assert breaker.allow()
    breaker.record("ok")
    assert breaker.cooldown_s == 30, "a success resets the cool-down"


def test_a_lost_probe_stops_blocking_after_a_cooldown() -> None:
    breaker, clock, _ = _breaker()
    _trip(breaker)
    clock.now += 30
    assert breaker.allow()
    assert not breaker.allow()
    clock.now += 30
    assert breaker.allow()


def test_outcomes_leave_the_window() -> None:
    breaker, clock, _ = _breaker()
    for _ in range(10_000):  # one busy second of successes
        breaker.record("ok")
    for _ in range(100):
        breaker.record("unanswered")
    assert _state(breaker) is BreakerState.CLOSED, "100 unanswered of 10,100 is healthy"
    clock.now += 61  # the busy second leaves the window
    for _ in range(10):
        breaker.record("unanswered")
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.window_counts() == (10, 0)


def test_origins_normalise_and_key_the_guards() -> None:
    assert origin_of("HTTPS://Hooks.Example.com:443/a/b?token=x") == "https://hooks.example.com"
    assert origin_of("http://hooks.example.com:8080/x") == "http://hooks.example.com:8080"
    assert origin_of("http://[::1]:80/x") == "http://[::1]"
    assert origin_of("not a url") == "invalid:"
    assert parse_origin("https://a.example/") == "https://a.example"
    for bad in ("https://a.example/path", "ftp://a.example", "https://a.example?q=1", "a.example"):
        with pytest.raises(ValueError, match=r"origin|more than"):
            parse_origin(bad)
    guards = EndpointGuards(CONFIG, max_in_flight_per_endpoint=2)
    variants = [f"https://slow.example/hook/{i}" for i in range(20)]
    for url in variants[:2]:
        guards.acquire(origin_of(url))
    assert not guards.has_capacity(origin_of(variants[7])), "20 URLs share one origin's slots"
    assert guards.has_capacity(origin_of("https://fast.example/hook"))
    assert guards.breaker(origin_of(variants[3])) is guards.breaker(origin_of(variants[9]))
    labels = OriginLabels(["https://a.example"])
    assert labels("https://a.example") == "https://a.example"
    assert labels("https://producer-chosen.example") == "other"


def test_rate_limit_and_breaker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_WEBHOOK_DEFAULT_URL", "https://b.example/hook")
    monkeypatch.setenv(
        "RELAY_WEBHOOK_RATE_LIMITS", '{"HTTPS://A.example:443/": 20, "default": 5.5}'
    )
    s = RelaySettings()
    assert s.webhook_rate_limits == {"https://a.example": 20.0, "default": 5.5}
    assert s.webhook_configured_origins == ["https://b.example", "https://a.example"]
    for bad in ("[1]", "{", '{"https://a.example/x": 1}', '{"https://a.example": 0}'):
        monkeypatch.setenv("RELAY_WEBHOOK_RATE_LIMITS", bad)
        with pytest.raises(ValidationError):
            RelaySettings()
    monkeypatch.delenv("RELAY_WEBHOOK_RATE_LIMITS")
    monkeypatch.setenv("RELAY_WEBHOOK_BREAKER_MAX_COOLDOWN_S", "10")
    with pytest.raises(ValidationError, match="MAX_COOLDOWN"):
        RelaySettings()
