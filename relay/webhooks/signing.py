"""Standard Webhooks signatures for outgoing deliveries (DESIGN §6, docs/webhooks.md).

Signed content is ``"{webhook-id}.{webhook-timestamp}.{raw body}"``, HMAC-SHA256 keyed by the
base64-decoded part of each ``whsec_`` secret; every active secret yields one ``v1,<base64>``
entry in ``webhook-signature`` so receivers can rotate without losing a delivery.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence

from relay import __version__
from relay.models import decode_secret

SIGNATURE_VERSION = "v1"
USER_AGENT = f"mindvideo-relay/{__version__}"


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64 HMAC-SHA256>`` entry over ``"{id}.{timestamp}.{body}"``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


class WebhookSigner:
    """Builds the headers of one delivery attempt.

    ``webhook-id`` is the result's ``event_id`` (stable across retries, so receivers deduplicate
    by it); ``webhook-timestamp`` is taken at each attempt, so a retry hours later still passes
    the receivers' ±5 minute tolerance.
    """

    def __init__(self, secrets: Sequence[str], clock: Callable[[], float] = time.time) -> None:
        self._keys = [decode_secret(secret) for secret in secrets]
        self._clock = clock

    def headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        """Headers for one attempt; without secrets the delivery goes out unsigned."""
        timestamp = int(self._clock())
        out = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._keys:
            out["webhook-signature"] = " ".join(
                sign(key, msg_id, timestamp, body) for key in self._keys
            )
        return out
