"""A stop that always ends: each step bounded, and a hard deadline behind them all.

On SIGTERM the relay drains its work for ``RELAY_SHUTDOWN_GRACE_S``, then commits, flushes and
closes. Each of those later steps talks to a dependency that may be gone (a final commit or a
producer flush against a frozen broker waits for aiokafka's 40 s request timeout, or forever),
so each gets at most ``STOP_STEP_TIMEOUT_S`` and all of them together ``SHUTDOWN_CLOSE_S``
after the grace. Should the process still be running at ``grace + SHUTDOWN_CLOSE_S`` (a step that
ignores cancellation, a blocked event loop), a timer thread logs one line and ends it with exit
code ``EXIT_STOP_DEADLINE``, before the kubelet's SIGKILL (the chart's
``terminationGraceExtraSeconds`` is larger than ``SHUTDOWN_CLOSE_S``). Nothing is lost: the next
owner of a partition resumes unfinished work from Redis and re-reads uncommitted records, which
the idempotency store turns into no-ops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# Time after the grace period for the final commit, the producer's flush and the closes.
SHUTDOWN_CLOSE_S = 10.0
# Any one of those steps.
STOP_STEP_TIMEOUT_S = 3.0
# While Kafka is known to be down a step that needs it gets only this long.
STOP_STEP_KAFKA_DOWN_S = 0.5
# The exit code when the hard deadline ends the process (docs/runbook.md, `relay run --help`).
EXIT_STOP_DEADLINE = 4


class StopBudget:
    """Runs the stop steps, each bounded by its own timeout and by the overall deadline."""

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # The steps end a little before the hard deadline, so the timer stays a last resort.
        self._deadline = clock() + grace_s + SHUTDOWN_CLOSE_S - 1.0
        self.timed_out: list[str] = []

    def remaining(self) -> float:
        return max(0.0, self._deadline - self._clock())

    async def step(
        self, name: str, action: Callable[[], Awaitable[object]], *, timeout_s: float
    ) -> None:
        """Run ``action()`` for at most ``timeout_s`` (and what is left of the budget); a step
        that overruns is abandoned with a warning and the stop goes on."""
        limit = min(timeout_s, self.remaining())
        try:
            await asyncio.wait_for(action(), max(limit, 0.01))
        except TimeoutError:
            self.timed_out.append(name)
            log.warning("stop step abandoned after its timeout", extra={"step": name, "s": limit})
        except asyncio.CancelledError:
            # aiokafka's consumer.stop() re-raises the cancellation of its own fetch tasks when
            # the broker is gone; only a cancellation of the stop itself may end the stop.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            self.timed_out.append(name)
            log.warning("stop step ended by a cancellation inside it", extra={"step": name})
        except Exception as exc:  # noqa: BLE001 - a failed close must not skip the others
            self.timed_out.append(name)
            log.warning("stop step failed", extra={"step": name, "reason": repr(exc)[:300]})


class HardDeadline:
    """A daemon timer that ends the process if the stop has not finished in time."""

    def __init__(self, seconds: float, *, exit_code: int = EXIT_STOP_DEADLINE) -> None:
        self._seconds = seconds
        self._exit_code = exit_code
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def start(self) -> None:
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        # From a thread, with the event loop possibly stuck: log through the handlers (they
        # lock), then make sure the line is out before the process ends.
        log.error(
            "the stop did not finish within its deadline; exiting without a clean close",
            extra={"deadline_s": self._seconds, "exit_code": self._exit_code},
        )
        for stream in (sys.stderr, sys.stdout):
            stream.flush()
        os._exit(self._exit_code)
