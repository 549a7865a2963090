"""Budget rules and prices: what an operator may write, calendar windows in UTC, which budgets a
request falls under, what it is expected to cost."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from relay.configuration import load_settings
from relay.exceptions import ConfigurationError
from relay.spend.prices import PriceBook, image_count, parse_hints, resolution_of, to_micro
from relay.spend.rules import applicable, parse_rules, scope_digest, window_at

MODEL = "apimart-doubao-seedance-4-0"


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("window", "moment", "start", "end", "ident"),
    [
        (
            "minute",
            "2026-11-25T19:07:59.9",
            "2026-11-25T19:07:00",
            "2026-11-25T19:08:00",
            "202611251907",
        ),
        ("hour", "2026-11-25T23:59:59", "2026-11-25T23:00:00", "2026-11-26T00:00:00", "2026112523"),
        ("day", "2026-02-28T12:00:00", "2026-02-28T00:00:00", "2026-03-01T00:00:00", "20260228"),
        ("month", "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00", "202612"),
        ("month", "2028-02-10T00:00:00", "2028-02-01T00:00:00", "2028-03-01T00:00:00", "202802"),
    ],
)
def test_calendar_windows_in_utc(
    window: str, moment: str, start: str, end: str, ident: str
) -> None:
    found = window_at(window, _ts(moment))  # type: ignore[arg-type]
    assert (found.start_s, found.end_s, found.id) == (_ts(start), _ts(end), ident)


def test_rules_parse_and_refuse_what_cannot_work() -> None:
    rules = parse_rules(
        '[{"name": "all", "scope": "global", "window": "day", "limit_usd": 50},'
        ' {"name": "tenant-hourly", "scope": "metadata.tenant", "window": "hour", "limit_usd": 2}]'
    )
    assert [(r.name, r.metadata_field) for r in rules] == [
        ("all", None),
        ("tenant-hourly", "tenant"),
    ]
    assert parse_rules("") == []
    bad = [
        '{"name": "x"}',  # not a list
        '[{"name": "a b", "scope": "global", "window": "day", "limit_usd": 1}]',
        '[{"name": "a", "scope": "tenant", "window": "day", "limit_usd": 1}]',
        '[{"name": "a", "scope": "metadata.", "window": "day", "limit_usd": 1}]',
        '[{"name": "a", "scope": "global", "window": "week", "limit_usd": 1}]',
        '[{"name": "a", "scope": "global", "window": "day", "limit_usd": -1}]',
        '[{"name": "a", "scope": "global", "window": "day", "limit_usd": 1, "extra": 1}]',
        '[{"name": "a", "scope": "global", "window": "day", "limit_usd": 1},'
        ' {"name": "a", "scope": "model", "window": "hour", "limit_usd": 1}]',
        "[{not json",
    ]
    for text in bad:
        with pytest.raises((ValueError, ValidationError)):
            parse_rules(text)


def test_which_budgets_apply_to_a_request() -> None:
    rules = parse_rules(
        '[{"name": "all", "scope": "global", "window": "month", "limit_usd": 50},'
        ' {"name": "per-model", "scope": "model", "window": "day", "limit_usd": 5},'
        ' {"name": "tenant", "scope": "metadata.tenant", "window": "hour", "limit_usd": 2}]'
    )
    now = _ts("2026-11-25T19:07:00")
    found = applicable(rules, MODEL, {"tenant": "acme"}, now)
    assert [b.entry for b in found] == [
        "all:202611:-",
        f"per-model:20261125:{scope_digest(MODEL)}",
        f"tenant:2026112519:{scope_digest('acme')}",
    ]
    untenanted = applicable(rules, MODEL, {"order": 1}, now)
    assert [b.rule.name for b in untenanted] == ["all", "per-model"], "no tenant: not limited"
    assert applicable(rules, MODEL, {"tenant": None}, now)[-1].rule.name == "per-model"
    # Scope values never appear in Redis keys: a bounded digest stands for them.
    assert len(scope_digest("x" * 10_000)) == 16
    assert scope_digest({"b": 1, "a": 2}) == scope_digest({"a": 2, "b": 1})


def test_expected_cost_from_hints_then_learned_else_unknown() -> None:
    book = PriceBook(parse_hints({MODEL: {"2K": 0.0252, "4K": 0.0504}, "other": {"*": 0.1}}))
    assert book.quote(MODEL, {"prompt": "p", "n": 3}).amount_micro == to_micro(3 * 0.0252)
    assert book.quote(MODEL, {"prompt": "p", "resolution": "4K"}).amount_micro == 50400
    assert book.quote("other", {"resolution": "8K", "n": 2}).amount_micro == 200000
    unknown = book.quote(MODEL, {"prompt": "p", "resolution": "1K"})
    assert not unknown.known
    assert unknown.price_field == f"{MODEL}|1K"
    book.learn(unknown.price_field, 0.0126)
    assert book.quote(MODEL, {"prompt": "p", "resolution": "1K", "n": 2}).amount_micro == 25200
    book.replace_learned({})
    assert not book.quote(MODEL, {"resolution": "1K"}).known


def test_n_and_resolution_defaults() -> None:
    assert image_count({}) == 1
    assert image_count({"n": True}) == 1
    assert image_count({"n": 0}) == 1
    assert image_count({"n": 4}) == 4
    assert resolution_of(MODEL, {}) == "2K"
    assert resolution_of("unknown-model", {}) == "*"
    assert resolution_of("unknown-model", {"resolution": "720p"}) == "720p"


@pytest.mark.parametrize(
    "hints",
    [
        [],
        {"m": 0.1},
        {"m": {}},
        {"m": {"2K": 0}},
        {"m": {"2K": "0.1"}},
        {"m": {"2K": float("inf")}},
    ],
)
def test_bad_price_hints_are_refused(hints: object) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_hints(hints)


def test_budget_settings_are_read_strictly_and_named_in_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "RELAY_BUDGETS", '[{"name": "all", "scope": "global", "window": "day", "limit_usd": 5}]'
    )
    monkeypatch.setenv("RELAY_PRICE_HINTS", '{"m": {"2K": 0.02}}')
    monkeypatch.setenv("RELAY_BUDGET_MODE", "reject")
    settings = load_settings()
    assert [r.name for r in settings.budgets] == ["all"]
    assert (settings.price_hints, settings.budget_mode) == ({"m": {"2K": 0.02}}, "reject")

    monkeypatch.setenv("RELAY_BUDGETS", '[{"name": "all", "scope": "tenant"}]')
    monkeypatch.setenv("RELAY_PRICE_HINTS", "{not json")
    monkeypatch.setenv("RELAY_BUDGET_MODE", "drop")
    with pytest.raises(ConfigurationError) as failed:
        load_settings()
    text = str(failed.value)
    for variable in ("RELAY_BUDGETS", "RELAY_PRICE_HINTS", "RELAY_BUDGET_MODE"):
        assert variable in text
