"""One signed POST of a result to one endpoint, and what its outcome means for the delivery.

2xx: delivered. 410: the endpoint is gone, stop. 429/503: retry, honouring ``Retry-After``.
Anything else (other statuses, 3xx included since redirects are not followed, timeouts,
connection errors) is retried on the schedule. An SSRF refusal is final. An attempt that fails
in the relay itself (``error``: a request that cannot be built, a bug) is a failed attempt too, on
the same schedule to the webhook dead-letter topic, never a silent retry.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from relay.backoff import parse_retry_after
from relay.exceptions import WebhookRefused
from relay.tracing.context import TraceContext
from relay.webhooks.breaker import AttemptHealth
from relay.webhooks.signing import WebhookSigner
from relay.webhooks.ssrf import GuardedResolver, SsrfGuard, SsrfPolicy

AttemptOutcome = Literal[
    "success", "http_4xx", "http_5xx", "timeout", "connection_error", "refused", "gone", "error"
]
MAX_ERROR_CHARS = 300
# A short answer is read so the connection can be kept alive; a long one is not worth it.
MAX_RESPONSE_READ_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt came to; ``outcome`` is the ``relay_webhook_attempts_total`` label."""

    outcome: AttemptOutcome
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None

    @property
    def retryable(self) -> bool:
        return self.outcome not in ("success", "refused", "gone")

    @property
    def says_about_endpoint(self) -> bool:
        """Whether the outcome tells the circuit breaker something about the endpoint: not a
        refusal by our SSRF policy, not an attempt that failed before anything was sent."""
        return self.outcome not in ("refused", "error")

    @property
    def endpoint_healthy(self) -> bool:
        """Did the endpoint answer sanely (whatever it answered)?"""
        return self.health == "ok"

    @property
    def health(self) -> AttemptHealth:
        """For the circuit breaker: ``unanswered`` when nobody answered (refused, reset, DNS,
        timeout), ``error`` for a 5xx or 429 answer, ``ok`` for anything else."""
        if self.outcome in ("timeout", "connection_error"):
            return "unanswered"
        if self.outcome == "http_5xx" or self.status == 429:
            return "error"
        return "ok"


def classify_status(status: int, retry_after: str | None) -> AttemptResult:
    if 200 <= status < 300:
        return AttemptResult("success", status)
    if status == 410:
        return AttemptResult("gone", status, "the endpoint answered 410 Gone")
    wait_s = parse_retry_after(retry_after) if status in (429, 503) else None
    outcome: AttemptOutcome = "http_5xx" if status >= 500 else "http_4xx"
    return AttemptResult(outcome, status, f"HTTP {status}", wait_s)


def _refusal_in(exc: BaseException) -> WebhookRefused | None:
    """A refusal raised inside aiohttp's connector may come back wrapped; find it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, WebhookRefused):
            return current
        seen.add(id(current))
        nested = getattr(current, "os_error", None)
        current = nested or current.__cause__ or current.__context__
    return None


class WebhookClient:
    """Posts signed deliveries through a connector that enforces the SSRF policy."""

    def __init__(
        self,
        signer: WebhookSigner,
        policy: SsrfPolicy,
        *,
        connect_timeout_s: float,
        timeout_s: float,
        max_connections: int,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._signer = signer
        self._resolver = GuardedResolver(resolver or DefaultResolver(), policy)
        self._guard = SsrfGuard(policy, self._resolver)
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=connect_timeout_s, sock_connect=connect_timeout_s
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=self._resolver,
            use_dns_cache=False,  # every new connection is resolved, and so checked, again
            limit=self._max_connections,
            family=socket.AF_UNSPEC,
        )
        # trust_env stays off: a proxy from the environment would connect on our behalf unchecked.
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(
        self, endpoint: str, msg_id: str, body: bytes, trace: TraceContext | None = None
    ) -> AttemptResult:
        """One attempt; never raises for what the endpoint or the network did. ``trace`` goes
        out as ``traceparent``/``tracestate`` (DESIGN §8)."""
        assert self._session is not None, "start() first"
        try:
            await self._guard.check(endpoint)
            headers = self._signer.headers(msg_id, body)
            if trace is not None:
                trace.add_to(headers)
            async with self._session.post(
                endpoint, data=body, headers=headers, allow_redirects=False
            ) as resp:
                result = classify_status(resp.status, resp.headers.get("Retry-After"))
                length = resp.content_length
                if length is not None and length <= MAX_RESPONSE_READ_BYTES:
                    # The status is the answer; the body is read only to keep the connection.
                    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                        await resp.read()
                return result
        except WebhookRefused as exc:
            return AttemptResult("refused", error=exc.reason)
        except TimeoutError:
            return AttemptResult("timeout", error="timed out")
        except (aiohttp.ClientError, OSError) as exc:
            refusal = _refusal_in(exc)
            if refusal is not None:
                return AttemptResult("refused", error=refusal.reason)
            return AttemptResult("connection_error", error=repr(exc)[:MAX_ERROR_CHARS])
