"""Capped exponential backoff with jitter, and ``Retry-After`` parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


class Backoff:
    """Delay before retry number ``attempt`` (1-based): uniform in [c/2, c] where
    c = min(cap, base * 2^(n-1)) ("equal jitter": spread out, never near zero).

    A server's ``Retry-After`` wins when it is longer than the drawn delay, but never beyond ``cap``
    times four, so a hostile header cannot park a request for a day.
    """

    def __init__(self, base_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * (2 ** max(0, attempt - 1)))
        drawn = self._rng.uniform(ceiling / 2, ceiling)
        if retry_after_s is not None:
            return max(drawn, min(retry_after_s, self.cap_s * 4))
        return drawn


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), else None."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
