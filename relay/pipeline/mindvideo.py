"""The MindVideo HTTP client: submit, snapshot and event stream, with errors sorted by next step.

Transient failures (timeouts, connection errors, 5xx, 408, 429 and a 409 that is not an idempotency
conflict) are retried up to ``max_attempts`` tries per call by the relay's one ``RetryPolicy``
(capped, jittered exponential backoff, ``Retry-After`` honoured, counted); then the caller (the
request lifecycle) holds the request and tries again. The ``Idempotency-Key`` header makes a
retried submit safe. 401/402/403 raise ``OperatorError``.

What a non-2xx answer means (the key refused, a wrong ``RELAY_MINDVIDEO_BASE_URL``, the request
rejected, a retry) is ``relay.pipeline.mindvideo_errors``. Redirects are not followed on the submit
and probe routes, whose answers also check the base URL.

Every answer, and every failure to connect, is reported to ``reachability``
(``relay.pipeline.reachability``): a MindVideo no call can reach shows on ``/readyz``.

A submit MindVideo answers as a replay (``Idempotent-Replayed: true``) of a task created before the
call (not by an earlier try of the same call) is marked on its snapshot (``idempotent_replayed``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from pydantic import ValidationError

from relay.backoff import Backoff, parse_retry_after
from relay.exceptions import OperatorError, RequestRejected, RetryableError, StreamUnavailable
from relay.metrics import RelayMetrics
from relay.models import SubmitBody, TaskSnapshot
from relay.pipeline.mindvideo_errors import (
    MAX_HEADER_CHARS,
    OPERATOR_STATUSES,
    ROUTE_CHECKS,
    Answer,
    error_for,
)
from relay.pipeline.reachability import Reachability
from relay.pipeline.sse import ServerSentEvent, SSEParser
from relay.retry import RetryPolicy

log = logging.getLogger(__name__)

REPLAYED_HEADER = "Idempotent-Replayed"
# Failures to connect: nothing reached MindVideo. A connect timeout is one too.
CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


def _code_class(status: int) -> str:
    return f"{status // 100}xx"


class MindVideoClient:
    """Talks to ``{base}/api/v1``; one shared connection pool, one API key."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        metrics: RelayMetrics,
        backoff: Backoff,
        max_attempts: int,
        request_timeout_s: float,
        sleep: Sleep = asyncio.sleep,
        stream_session: aiohttp.ClientSession | None = None,
    ) -> None:
        """``stream_session``, when given, carries the event streams, so streams held for as long
        as their tasks run never take connections that submits and polls need."""
        self._session = session
        self._stream_session = stream_session or session
        self._stream_timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._base = base_url.rstrip("/") + "/api/v1"
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._metrics = metrics
        self._retry = RetryPolicy(
            backoff,
            metrics.retries,
            scope="mindvideo",
            max_attempts=max_attempts,
            outages_unbounded=False,
            sleep=sleep,
        )
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self.reachability = Reachability(base_url)

    async def submit(
        self, idempotency_key: str, model: str, payload: dict[str, Any]
    ) -> TaskSnapshot:
        """Create a task (or get back the one this key already created)."""
        body = SubmitBody(model=model, input=payload).model_dump_json().encode()
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
        }

        sent_before = False  # whether an earlier try of this call may have created the task

        async def once() -> TaskSnapshot:
            nonlocal sent_before
            try:
                data, replayed = await self._exchange(
                    "submit", "POST", f"{self._base}/tasks", headers, body
                )
            except RetryableError as exc:
                sent_before = sent_before or exc.maybe_sent
                raise
            snapshot = _snapshot(data)
            if replayed and not sent_before:  # created before this call, not by a try of it
                return snapshot.model_copy(update={"idempotent_replayed": True})
            return snapshot

        return await self._retrying("submit", once)

    async def get_task(self, task_id: str) -> TaskSnapshot:
        async def once() -> TaskSnapshot:
            url = f"{self._base}/tasks/{task_id}"
            return _snapshot(await self._call("get", "GET", url, self._headers, None))

        return await self._retrying("get", once)

    async def probe(self) -> None:
        """Check that the key is usable: a lookup of a task that cannot exist must be a 404."""
        try:
            await self._call("probe", "GET", f"{self._base}/tasks/task_relay_probe", self._headers)
        except RequestRejected:
            return

    async def events(
        self, task_id: str, last_event_id: str | None, idle_timeout_s: float
    ) -> AsyncIterator[ServerSentEvent]:
        """Yield the task's Server-Sent Events until the server closes the stream.

        Raises ``StreamUnavailable`` when there is no usable stream (wrong status or content type,
        connection failure, idle for longer than ``idle_timeout_s``), and ``OperatorError`` on
        401/402/403.
        """
        headers = {**self._headers, "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = self._stream_timeouts.get(idle_timeout_s)
        if timeout is None:  # one per idle timeout (there is one): not built per request
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=idle_timeout_s)
            self._stream_timeouts[idle_timeout_s] = timeout
        url = f"{self._base}/tasks/{task_id}/events"
        try:
            async with self._stream_session.get(url, headers=headers, timeout=timeout) as resp:
                self.reachability.answered()
                self._metrics.mindvideo_responses.labels("events", _code_class(resp.status)).inc()
                if resp.status in OPERATOR_STATUSES:
                    raise OperatorError(
                        resp.status, (await resp.read())[:200].decode("utf-8", "replace")
                    )
                ctype = resp.headers.get("Content-Type", "")
                if resp.status != 200 or "text/event-stream" not in ctype.lower():
                    raise StreamUnavailable(f"events answered {resp.status} {ctype or '-'}")
                parser = SSEParser()
                async for chunk in resp.content.iter_any():
                    for event in parser.feed(chunk):
                        yield event
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, CONNECT_ERRORS):
                self.reachability.failed(exc)
            self._metrics.mindvideo_responses.labels("events", "error").inc()
            raise StreamUnavailable(f"event stream broke: {exc!r}") from exc

    async def _retrying(self, operation: str, once: Callable[[], Awaitable[T]]) -> T:
        """``once`` until it succeeds or the policy gives up; the error raised then says whether
        any of the tries may have reached MindVideo (``maybe_sent``)."""
        attempt, sent = 1, False
        while True:
            try:
                return await once()
            except RetryableError as exc:
                sent = sent or exc.maybe_sent
                if not self._retry.allows(attempt, exc):
                    exc.maybe_sent = sent
                    raise
                self._metrics.mindvideo_retries.labels(operation).inc()
                # Connection failures are counted and logged by ``reachability``, not per try.
                log.log(
                    logging.DEBUG if exc.reason == "connect" else logging.INFO,
                    "mindvideo %s failed, retrying",
                    operation,
                    extra={"attempt": attempt, "reason": str(exc)},
                )
                await self._retry.pause(attempt, exc)
                attempt += 1

    async def _call(
        self,
        operation: str,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None = None,
    ) -> Any:
        data, _ = await self._exchange(operation, method, url, headers, body)
        return data

    async def _exchange(
        self,
        operation: str,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None = None,
    ) -> tuple[Any, bool]:
        """One request: the JSON answer and whether MindVideo says it replayed an earlier one."""
        checks_route = operation in ROUTE_CHECKS
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                data=body,
                timeout=self._timeout,
                allow_redirects=not checks_route,
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                replayed = resp.headers.get(REPLAYED_HEADER, "").strip().lower() == "true"
                location = resp.headers.get("Location", "-")[:MAX_HEADER_CHARS]
                ctype = resp.headers.get("Content-Type", "-")[:MAX_HEADER_CHARS]
        except CONNECT_ERRORS as exc:
            # No connection was made: the request cannot have had any effect.
            self.reachability.failed(exc)
            self._metrics.mindvideo_responses.labels(operation, "error").inc()
            raise RetryableError(
                f"{method} {url}: {exc!r}", reason="connect", maybe_sent=False
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._metrics.mindvideo_responses.labels(operation, "error").inc()
            raise RetryableError(f"{method} {url}: {exc!r}", reason="network") from exc
        self.reachability.answered()
        self._metrics.mindvideo_responses.labels(operation, _code_class(status)).inc()
        if 200 <= status < 300:
            try:
                return json.loads(raw), replayed
            except ValueError as exc:
                raise RetryableError(
                    f"{operation}: MindVideo answered non-JSON {status}", reason="bad_response"
                ) from exc
        raise error_for(Answer(operation, method, url, status, raw, retry_after, location, ctype))


def _snapshot(data: Any) -> TaskSnapshot:
    """Accept the snapshot bare or wrapped in ``{"data": ...}`` / ``{"task": ...}``."""
    if isinstance(data, dict):
        for wrapper in ("data", "task"):
            inner = data.get(wrapper)
            if "task_id" not in data and isinstance(inner, dict):
                data = inner
                break
        if "task_id" not in data and "id" in data:
            data = {**data, "task_id": data["id"]}
    try:
        return TaskSnapshot.model_validate(data)
    except ValidationError as exc:
        raise RetryableError(
            f"unreadable task snapshot: {exc.error_count()} errors", reason="bad_response"
        ) from exc
