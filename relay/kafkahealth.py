"""Whether the relay can talk to Kafka now, from when it last completed a broker round trip.

aiokafka hides a broker outage: ``getmany`` returns nothing whether the topic is idle or the
broker is gone, and its clients reconnect forever while logging each refusal. So the relay keeps
the time of its last successful round trip with the cluster — an offset commit, a published
record, an offsets or metadata answer — and ``/readyz`` reports Kafka as not ready, and
``relay_dependency_up{dependency="kafka"}`` drops to 0, once ``RELAY_KAFKA_HEALTH_TIMEOUT_S``
pass without one. When the traffic itself proves nothing (an idle relay), :meth:`KafkaHealth.run`
asks the cluster for its metadata, each time bounded by a timeout, so a frozen broker (a stopped
process, a network partition that drops packets) is caught as surely as a refused connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

# How often the watcher looks; it sends a metadata request only when nothing else succeeded
# within this interval, so a busy relay adds no traffic.
PROBE_INTERVAL_S = 1.0
# One probe never waits longer than this, nor longer than half the health timeout.
PROBE_TIMEOUT_MAX_S = 5.0

RoundTrip = Callable[[], Awaitable[object]]


class KafkaHealth:
    """The age of the last successful broker round trip, and the readiness problem it implies."""

    def __init__(
        self,
        timeout_s: float,
        *,
        bootstrap: str = "",
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_change(up)`` is called when Kafka goes down or comes back (metrics, the lag
        gauge); ``bootstrap`` is only quoted in the not-ready reason."""
        self.timeout_s = timeout_s
        self._bootstrap = bootstrap
        self._on_change = on_change
        self._clock = clock
        self._last_ok = clock()
        self._up = True
        self._last_error = ""

    def ok(self) -> None:
        """Record a successful round trip: the hook the consumer and the publisher call."""
        self._last_ok = self._clock()
        if not self._up:
            self._up = True
            log.warning("Kafka answers again")
            if self._on_change is not None:
                self._on_change(True)

    @property
    def seconds_since_ok(self) -> float:
        return max(0.0, self._clock() - self._last_ok)

    def problem(self) -> str | None:
        """``None`` while a round trip succeeded within the timeout, else the reason."""
        age = self.seconds_since_ok
        if age <= self.timeout_s:
            return None
        if self._up:
            self._up = False
            log.error(
                "Kafka unreachable: no successful broker round trip",
                extra={"seconds": round(age, 1), "bootstrap_servers": self._bootstrap},
            )
            if self._on_change is not None:
                self._on_change(False)
        detail = f": {self._last_error}" if self._last_error else ""
        return (
            f"no successful Kafka round trip for {age:.0f} s "
            f"(RELAY_KAFKA_BOOTSTRAP_SERVERS={self._bootstrap}){detail}"
        )

    async def run(self, round_trip: RoundTrip) -> None:
        """Probe with ``round_trip`` whenever nothing else proved Kafka alive lately; forever."""
        probe_timeout_s = min(PROBE_TIMEOUT_MAX_S, max(0.1, self.timeout_s / 2))
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if self.seconds_since_ok >= PROBE_INTERVAL_S:
                try:
                    await asyncio.wait_for(round_trip(), probe_timeout_s)
                except TimeoutError:
                    self._last_error = f"a metadata request got no answer in {probe_timeout_s} s"
                except KafkaError as exc:
                    self._last_error = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                else:
                    self._last_error = ""
                    self.ok()
            self.problem()  # logs and reports the change at once, not at the next /readyz
