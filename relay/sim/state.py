"""The simulator's whole mutable state, kept in one object under one aiohttp app key.

Handlers reach it through ``request.app[STATE]``; nothing lives in module globals, so several
simulators (one per test) can run in one process.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from relay.sim.config import SimConfig
from relay.sim.faults import FaultInjector
from relay.sim.keys import KeyRing
from relay.sim.ledger import Ledger
from relay.sim.tasks import TaskStore

Clock = Callable[[], float]
"""Returns the current time in unix seconds (``time.time`` unless a test injects its own)."""


class RequestStats:
    """Requests seen, by endpoint (``METHOD /route/{pattern}``) and response status code."""

    def __init__(self) -> None:
        self._counts: dict[str, Counter[int]] = {}

    def record(self, endpoint: str, status: int) -> None:
        self._counts.setdefault(endpoint, Counter())[status] += 1

    def count(self, endpoint: str, status: int | None = None) -> int:
        counts = self._counts.get(endpoint, Counter())
        return counts.total() if status is None else counts[status]

    def view(self) -> dict[str, dict[str, int]]:
        return {
            endpoint: {str(status): n for status, n in sorted(counts.items())}
            for endpoint, counts in sorted(self._counts.items())
        }

    def clear(self) -> None:
        self._counts.clear()


@dataclass
class SimState:
    """Config, clock and the stores; ``timeline_rng`` plans tasks, the injector draws faults."""

    config: SimConfig
    clock: Clock
    keys: KeyRing
    faults: FaultInjector
    timeline_rng: random.Random
    store: TaskStore = field(default_factory=TaskStore)
    ledger: Ledger = field(default_factory=Ledger)
    stats: RequestStats = field(default_factory=RequestStats)

    def now(self) -> float:
        return self.clock()

    def base_url(self, request: web.Request) -> str:
        """Where output images are reachable: ``public_base_url`` or the request's origin."""
        if self.config.public_base_url:
            return self.config.public_base_url.rstrip("/")
        return f"{request.scheme}://{request.host}"


STATE = web.AppKey("relay_sim_state", SimState)
# Typed request storage (``web.RequestKey`` first appeared in aiohttp 3.14).
API_KEY = web.RequestKey("relay_sim_api_key", str)
REQUEST_ID = web.RequestKey("relay_sim_request_id", str)


def api_key_of(request: web.Request) -> str:
    """The API key the auth middleware accepted for this request."""
    if API_KEY not in request:
        raise RuntimeError("api_key_of() called on a route the auth middleware does not guard")
    return request[API_KEY]
