"""What a task costs and what was charged: MindVideo's price list and the simulator's ledger.

Prices are per image and scale with resolution around the model's 2K price (the seed's one 2K
image of Seedance 4.0 costs 0.0252 USD). Amounts are ``Decimal`` so the ledger's sums are exact;
they become floats only on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal

from relay.models import TERMINAL_STATUSES

COST_QUANTUM_USD = Decimal("0.0001")
DEFAULT_RESOLUTION = "2K"
DEFAULT_IMAGE_COUNT = 1
RESOLUTION_PRICE_FACTOR: Mapping[str, Decimal] = {
    "1K": Decimal("0.5"),
    "2K": Decimal("1"),
    "4K": Decimal("2"),
}


def image_count(model_input: Mapping[str, object]) -> int:
    """``n`` of the input, or the schema default 1 when absent (or not a positive integer)."""
    value = model_input.get("n", DEFAULT_IMAGE_COUNT)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return DEFAULT_IMAGE_COUNT
    return value


def price_per_image(price_2k_usd: Decimal, resolution: object) -> Decimal:
    """The model's per-image price at ``resolution`` (unknown resolutions cost as 2K)."""
    factor = RESOLUTION_PRICE_FACTOR.get(str(resolution), Decimal("1"))
    return price_2k_usd * factor


def estimate_cost(price_2k_usd: Decimal, model_input: Mapping[str, object]) -> Decimal:
    """``cost_estimate``: per-image price times ``n``, rounded half-up to 4 decimal places."""
    resolution = model_input.get("resolution", DEFAULT_RESOLUTION)
    total = price_per_image(price_2k_usd, resolution) * image_count(model_input)
    return total.quantize(COST_QUANTUM_USD, rounding=ROUND_HALF_UP)


def actual_cost(estimate_usd: Decimal, status: str) -> Decimal | None:
    """``cost_actual``: the estimate when succeeded, nothing when failed or cancelled.

    ``None`` (``null`` on the wire) until the task is terminal.
    """
    if status not in TERMINAL_STATUSES:
        return None
    return estimate_usd if status == "succeeded" else Decimal("0")


@dataclass(frozen=True)
class Charge:
    """One charge, made when a task is created (never on a replay or a refused request)."""

    idempotency_key: str | None
    task_id: str
    request_id: str
    model: str
    amount_usd: Decimal
    created_at_s: float


class Ledger:
    """Append-only list of charges, in creation order; ``/_sim/ledger`` reads it."""

    def __init__(self) -> None:
        self._charges: list[Charge] = []

    def append(self, charge: Charge) -> None:
        self._charges.append(charge)

    def charges(self) -> list[Charge]:
        return list(self._charges)

    def reprice(self, task_id: str, amount_usd: Decimal) -> bool:
        """Change what one task was charged, behind the relay's back (``/_sim/``, for tests of
        reconciliation); whether the task has a charge."""
        for index, charge in enumerate(self._charges):
            if charge.task_id == task_id:
                self._charges[index] = replace(charge, amount_usd=amount_usd)
                return True
        return False

    def clear(self) -> None:
        self._charges.clear()
