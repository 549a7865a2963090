"""What a request is expected to cost before it is submitted (DESIGN §9).

Expected cost = unit price × ``n``. The unit price is per (model, resolution): from
``RELAY_PRICE_HINTS`` (``{"model": {"2K": 0.0252, "*": 0.03}}``; ``*`` is any resolution the
model's hints do not name), else learned from MindVideo's ``cost_estimate`` of an earlier task of
the same model and resolution (stored in Redis, so every relay process learns it at once), else
unknown: such a request is admitted one at a time until its price is learned.

Money is counted in integer micro-USD everywhere budgets are kept, so sums are exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.schemas import SEEDANCE_4_0

MICRO_PER_USD = 1_000_000
ANY_RESOLUTION = "*"
DEFAULT_IMAGE_COUNT = 1
# Resolutions the models the relay validates default to when the input names none.
DEFAULT_RESOLUTION = {SEEDANCE_4_0: "2K"}

PriceHints = dict[str, dict[str, float]]


def to_micro(usd: float) -> int:
    return round(usd * MICRO_PER_USD)


def to_usd(micro: int | float) -> float:
    return round(micro / MICRO_PER_USD, 6)


def parse_hints(value: object) -> PriceHints:
    """``RELAY_PRICE_HINTS``: models to resolutions to positive, finite USD per image."""
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object like {"model": {"2K": 0.0252}}')
    hints: PriceHints = {}
    for model, prices in value.items():
        if not isinstance(prices, dict) or not prices:
            raise ValueError(f"{model}: must map resolutions to USD per image")
        for resolution, price in prices.items():
            valid = isinstance(price, int | float) and not isinstance(price, bool)
            if not valid or not math.isfinite(price) or price <= 0:
                raise ValueError(f"{model} {resolution}: the price must be a positive number")
        hints[str(model)] = {str(r): float(p) for r, p in prices.items()}
    return hints


def image_count(model_input: Mapping[str, Any]) -> int:
    """``n`` of the input; 1 when absent or not a positive integer (MindVideo's default)."""
    value = model_input.get("n", DEFAULT_IMAGE_COUNT)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return DEFAULT_IMAGE_COUNT
    return value


def resolution_of(model: str, model_input: Mapping[str, Any]) -> str:
    """The input's resolution, the model's default when it names none, else ``*``."""
    value = model_input.get("resolution")
    if isinstance(value, str) and value:
        return value
    return DEFAULT_RESOLUTION.get(model, ANY_RESOLUTION)


@dataclass(frozen=True, slots=True)
class Quote:
    """The expected cost of one request. ``amount_micro`` is ``None`` when the price is unknown."""

    price_field: str  # "<model>|<resolution>": where a learned price is kept
    n: int
    amount_micro: int | None

    @property
    def known(self) -> bool:
        return self.amount_micro is not None


class PriceBook:
    """Hints first, then learned prices (a cache of Redis' that the monitor keeps fresh and
    every confirmed submit updates)."""

    def __init__(self, hints: PriceHints) -> None:
        self._hints = hints
        self._learned: dict[str, float] = {}

    def quote(self, model: str, model_input: Mapping[str, Any]) -> Quote:
        resolution = resolution_of(model, model_input)
        field = f"{model}|{resolution}"
        n = image_count(model_input)
        unit = self.unit_price(model, resolution)
        return Quote(field, n, None if unit is None else to_micro(unit * n))

    def unit_price(self, model: str, resolution: str) -> float | None:
        hints = self._hints.get(model, {})
        hinted = hints.get(resolution, hints.get(ANY_RESOLUTION))
        if hinted is not None:
            return hinted
        return self._learned.get(f"{model}|{resolution}")

    def learn(self, field: str, unit_usd: float) -> None:
        self._learned[field] = unit_usd

    def replace_learned(self, learned: Mapping[str, float]) -> None:
        self._learned = dict(learned)

    @property
    def learned(self) -> dict[str, float]:
        return dict(self._learned)
