"""The credentials gate: closed while MindVideo refuses the operator's key or credit, or while
``RELAY_MINDVIDEO_BASE_URL`` points at something that is not MindVideo's API.

While closed, no request is submitted or followed (and none is rejected): work waits, the consumer
stops fetching, ``/readyz`` says why, and a probe reopens the gate once the key works again.
"""

from __future__ import annotations

import asyncio
import logging

from relay.exceptions import OperatorError

log = logging.getLogger(__name__)


class CredentialGate:
    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._closed = asyncio.Event()
        self.reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def close(self, error: OperatorError) -> None:
        if self._open.is_set():
            log.error(
                "MindVideo's API is not where RELAY_MINDVIDEO_BASE_URL points; pausing all work"
                if error.wrong_base_url
                else "MindVideo refused the operator's credentials; pausing all work",
                extra={"status": error.status, "reason": error.message[:200]},
            )
        self.reason = f"MindVideo answered {error.status}: {error.message[:200]}"
        self._open.clear()
        self._closed.set()

    def reopen(self) -> None:
        if not self._open.is_set():
            log.warning("MindVideo accepts the credentials again; resuming work")
        self.reason = None
        self._closed.clear()
        self._open.set()

    async def wait_open_for(self, timeout_s: float) -> bool:
        """Wait until open, at most ``timeout_s``; whether it is open."""
        try:
            await asyncio.wait_for(self._open.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def wait_closed(self) -> None:
        await self._closed.wait()
