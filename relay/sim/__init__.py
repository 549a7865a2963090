"""A faithful MindVideo simulator: the task API, its events stream, a ledger and fault injection.

``build_app(SimConfig(...), clock=...)`` gives an aiohttp application for tests and for
``relay sim`` (see ``relay.sim.cli``). The guesses it makes where MindVideo's documentation is
silent are listed in ``relay.sim.app``.
"""

from relay.sim.app import build_app
from relay.sim.config import DurationRange, SimConfig
from relay.sim.faults import FaultConfig
from relay.sim.state import STATE, SimState

__all__ = ["STATE", "DurationRange", "FaultConfig", "SimConfig", "SimState", "build_app"]
