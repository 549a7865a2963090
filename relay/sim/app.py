"""``build_app``: the MindVideo simulator as an aiohttp application.

Guesses (where MindVideo's API page is silent, this is what the simulator does):

- Auth is checked before faults: a 429/5xx fault hits only requests with an active key, and
  latency is added to every ``/api/v1`` response, 401s and 404s included.
- A 5xx (500, 502 or 503, 503 with ``Retry-After``) is answered before the handler, so a submit
  that gets one created and charged nothing; a retry with the same ``Idempotency-Key`` is safe.
- Submit checks run: 400 malformed body or ``Idempotency-Key`` (must be 1-255 printable ASCII),
  404 unknown model, 422 invalid input, idempotent replay/409 conflict, then 402 no credit. A
  replay is therefore allowed for a key out of credit (it charges nothing); other top-level
  body fields are ignored.
- Idempotency keys and tasks are scoped per API key: another key sees 404 and may reuse the
  same ``Idempotency-Key`` for its own task. A replay answers 200 with the submit body carrying
  the task's current status and ``Idempotent-Replayed: true``.
- Prices scale with resolution around the model's 2K price: 1K half, 4K double; cost_estimate =
  per-image price x n, rounded half-up to 4 places. Unknown resolutions of a model without a
  schema cost as 2K.
- cost_actual: succeeded = cost_estimate; failed = 0.0; cancelled = 0.0 (nothing is billed for
  images not delivered); null until terminal.
- Failed tasks carry ``error {"code": "generation_failed"}``; cancelled tasks carry no error and
  no output. Output images are 8x8 PNGs under ``/_sim/images/{task_id}/{i}.png`` (i from 0),
  served without auth, and only while the task is succeeded.
- ``request_id`` of a task is the ``X-Request-Id`` of the request that created it; every HTTP
  response gets its own ``X-Request-Id``. Ids are random (not from the seed) so they never
  repeat across restarts; the seed fixes timelines, outcomes and faults only.
- Events: SSE ids are 1, 2, 3… per task; queued and processing are separate events even if
  ``queued_s`` is 0; a cancel keeps the events so far and adds ``cancelled``. An unparsable
  ``Last-Event-ID``, or one higher than the task has reached, replays from the start. After the
  terminal event the response ends; connecting to a terminal task replays and ends at once.
- A dropped stream closes the connection (no final chunk) just before the terminal event, and
  only if it already sent an event in this connection, so a client resuming with
  ``Last-Event-ID`` always gets the terminal event eventually.
- ``failure_rate`` can be changed at run time with the faults; queued/processing durations
  cannot. ``POST /_sim/reset`` also clears request stats; keys and faults survive it.
- ``POST /_sim/forget {"task_ids": [...]}`` makes MindVideo forget tasks (a purge, a key moved to
  another account): they answer 404, their event streams end without a terminal event, their
  idempotency keys are free again; their charges stay on the ledger (status ``unknown``).
- ``POST /_sim/tasks/{task_id}/reprice {"cost_usd": 0.05}`` changes what a task costs after the
  fact (estimate, actual cost and ledger charge), as a billing correction would: the relay is not
  told, and ``relay reconcile`` should find the drift.
- Unknown routes answer 404 ``not_found`` and wrong methods 405 ``method_not_allowed``.
"""

from __future__ import annotations

import random
import time

from aiohttp import web

from relay.sim import api, events, internal
from relay.sim.config import SimConfig
from relay.sim.faults import FaultInjector
from relay.sim.keys import KeyRing
from relay.sim.middleware import add_request_id_header, gate_api, track_requests
from relay.sim.state import STATE, Clock, SimState

IMAGE_ROUTE_PATTERN = r"/_sim/images/{task_id}/{index:\d+}.png"


def _rngs(seed: int | None) -> tuple[random.Random, random.Random]:
    """Separate streams for timelines and faults, so changing one never shifts the other."""
    if seed is None:
        return random.Random(), random.Random()
    return random.Random(f"{seed}:timeline"), random.Random(f"{seed}:faults")


def build_app(config: SimConfig, *, clock: Clock | None = None) -> web.Application:
    """A fresh simulator: its state lives in ``app[STATE]``, so apps never share anything.

    ``clock`` returns unix seconds (default ``time.time``); tests pass one they advance by
    hand, since task status is computed from it lazily.
    """
    timeline_rng, fault_rng = _rngs(config.seed)
    app = web.Application(middlewares=[track_requests, gate_api])
    app[STATE] = SimState(
        config=config,
        clock=clock or time.time,
        keys=KeyRing(config.api_keys),
        faults=FaultInjector(config.fault_config(), fault_rng),
        timeline_rng=timeline_rng,
    )
    app.on_response_prepare.append(add_request_id_header)
    app.router.add_post("/api/v1/tasks", api.submit_task)
    app.router.add_get("/api/v1/tasks/{task_id}", api.get_task)
    app.router.add_post("/api/v1/tasks/{task_id}/cancel", api.cancel_task)
    app.router.add_get("/api/v1/tasks/{task_id}/events", events.stream_task_events)
    app.router.add_get("/_sim/ledger", internal.get_ledger)
    app.router.add_get("/_sim/faults", internal.get_faults)
    app.router.add_put("/_sim/faults", internal.put_faults)
    app.router.add_get("/_sim/keys", internal.get_keys)
    app.router.add_post("/_sim/keys", internal.post_keys)
    app.router.add_post("/_sim/reset", internal.post_reset)
    app.router.add_post("/_sim/forget", internal.post_forget)
    app.router.add_post("/_sim/tasks/{task_id}/reprice", internal.post_reprice)
    app.router.add_get("/_sim/stats", internal.get_stats)
    app.router.add_get(IMAGE_ROUTE_PATTERN, internal.get_image)
    return app
