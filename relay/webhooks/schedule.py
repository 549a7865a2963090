"""When the next webhook attempt is due: the operator's schedule, jittered, and ``Retry-After``.

``RELAY_WEBHOOK_RETRY_SCHEDULE`` lists the delay before each attempt, one entry per attempt
(default Svix-like: 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h ≈ 27.6 h over 8 attempts). Each
delay is spread by ±``jitter`` (20 % by default) so that an endpoint coming back is not hit by
every retry at the same instant.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


class RetrySchedule:
    """Delays before attempts 0, 1, …; ``None`` once the schedule is exhausted."""

    def __init__(
        self,
        delays_s: Sequence[float],
        *,
        jitter: float = 0.2,
        retry_after_max_s: float = 3600.0,
        rng: random.Random | None = None,
    ) -> None:
        if not delays_s or any(d < 0 for d in delays_s):
            raise ValueError("a retry schedule needs at least one delay, none negative")
        if not 0 <= jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")
        self.delays_s = tuple(float(d) for d in delays_s)
        self.jitter = jitter
        self.retry_after_max_s = retry_after_max_s
        self._rng = rng or random.Random()

    @property
    def max_attempts(self) -> int:
        return len(self.delays_s)

    def delay_before(self, attempt: int, retry_after_s: float | None = None) -> float | None:
        """Delay before attempt number ``attempt`` (0-based), or ``None`` if there is none.

        A server's ``Retry-After`` (429/503) is honoured when longer than the scheduled delay,
        clamped to ``retry_after_max_s`` so a hostile header cannot park a delivery for days.
        """
        if attempt >= len(self.delays_s):
            return None
        base = self.delays_s[attempt]
        delay = base * self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after_s is not None:
            delay = max(delay, min(max(0.0, retry_after_s), self.retry_after_max_s))
        return delay
