"""Whether MindVideo can be reached at all: connection failures counted, not logged one by one.

A wrong host in ``RELAY_MINDVIDEO_BASE_URL``, a DNS name that does not resolve or egress blocked
by a NetworkPolicy or firewall make every call fail before anything is sent. Each failed call is
retried (an outage is waited out), so without this the relay looks healthy: work simply waits.
After ``UNREACHABLE_AFTER_FAILURES`` connection failures in a row with no answer in between
(any HTTP status is an answer), ``problem()`` says so, naming the variable and egress, and
``/readyz`` and ``relay_dependency_up{dependency="mindvideo"}`` show it; the first answer clears
it. The log gets one WARNING when it starts, then at most one per ``LOG_INTERVAL_S`` with the
count of failures since the last one, and one when MindVideo answers again: never one per retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from relay.logs import redact_url

log = logging.getLogger(__name__)

UNREACHABLE_AFTER_FAILURES = 5
LOG_INTERVAL_S = 30.0
MAX_ERROR_CHARS = 200


class Reachability:
    """Counts connection failures to MindVideo since its last answer."""

    def __init__(
        self,
        base_url: str,
        *,
        after_failures: int = UNREACHABLE_AFTER_FAILURES,
        log_interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base_url = redact_url(base_url)
        self._after = after_failures
        self._log_interval_s = log_interval_s
        self._clock = clock
        self._failures = 0  # in a row, since the last answer
        self._first_failure_s = 0.0
        self._last_error = ""
        self._logged_s: float | None = None  # when the last WARNING was written
        self._unlogged = 0  # failures since that WARNING

    @property
    def unreachable(self) -> bool:
        return self._failures >= self._after

    def answered(self) -> None:
        """MindVideo answered a call (whatever the status): it can be reached."""
        if self.unreachable:
            log.warning(
                "MindVideo answers again",
                extra={
                    "base_url": self._base_url,
                    "failed_connections": self._failures,
                    "unreachable_s": round(self._clock() - self._first_failure_s, 1),
                },
            )
        self._failures = 0
        self._logged_s = None
        self._unlogged = 0

    def failed(self, error: BaseException) -> None:
        """A call could not connect (refused, DNS, TLS handshake, connect timeout)."""
        now = self._clock()
        if self._failures == 0:
            self._first_failure_s = now
        self._failures += 1
        self._unlogged += 1
        # aiohttp's connector errors repr their whole connection key: the OS error says it all.
        cause = getattr(error, "os_error", None) or error
        text = f"{type(error).__name__}: {cause}" if cause is not error else repr(error)
        self._last_error = " ".join(text.split())[:MAX_ERROR_CHARS]
        if not self.unreachable:
            return
        if self._logged_s is not None and now - self._logged_s < self._log_interval_s:
            return
        log.warning(
            "cannot connect to MindVideo; check RELAY_MINDVIDEO_BASE_URL and the egress to it",
            extra={
                "base_url": self._base_url,
                "failed_connections": self._unlogged,
                "in_a_row": self._failures,
                "unreachable_s": round(now - self._first_failure_s, 1),
                "last_error": self._last_error,
            },
        )
        self._logged_s = now
        self._unlogged = 0

    def problem(self) -> str | None:
        """The readiness text while MindVideo cannot be reached, else ``None``."""
        if not self.unreachable:
            return None
        seconds = round(self._clock() - self._first_failure_s)
        return (
            f"cannot connect to MindVideo at {self._base_url}: {self._failures} connection "
            f"attempts in a row failed and none answered for {seconds} s (last: "
            f"{self._last_error}); check RELAY_MINDVIDEO_BASE_URL (host, port, scheme) and the "
            "egress to it (DNS, NetworkPolicy, proxy, firewall)"
        )
