"""Verify a mindvideo-relay webhook in a Python receiver, with nothing but the standard library.

Usage in a receiver (any framework; pass the raw body bytes, not re-encoded JSON)::

    from relay.webhooks.verify import verify_webhook
    from relay.exceptions import WebhookVerificationError

    try:
        result = verify_webhook(os.environ["WEBHOOK_SECRET"], request.headers, raw_body)
    except WebhookVerificationError:
        return 400
    if seen(result["event_id"]):      # equals the webhook-id header: deduplicate by it
        return 200
    ...

Several secrets may be passed during a rotation; one matching ``v1`` entry is enough. This follows
Standard Webhooks, so the ``standardwebhooks`` package verifies the same deliveries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from relay.exceptions import WebhookVerificationError
from relay.models import decode_secret
from relay.webhooks.signing import SIGNATURE_VERSION

DEFAULT_TOLERANCE_S = 300


def _keys(secret_or_secrets: str | bytes | Sequence[str | bytes]) -> list[bytes]:
    items: Sequence[str | bytes] = (
        [secret_or_secrets] if isinstance(secret_or_secrets, str | bytes) else secret_or_secrets
    )
    keys = [item if isinstance(item, bytes) else decode_secret(item) for item in items]
    if not keys:
        raise ValueError("at least one webhook secret is needed to verify")
    return keys


def verify_webhook(
    secret_or_secrets: str | bytes | Sequence[str | bytes],
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Check a delivery's signature and timestamp; return the parsed result record.

    ``secret_or_secrets``: ``whsec_…`` strings (or raw key bytes). ``headers``: any mapping
    (names are matched case-insensitively). Raises :class:`WebhookVerificationError` saying what
    is wrong: missing headers, a timestamp outside ``±tolerance_s``, or no matching signature.
    """
    keys = _keys(secret_or_secrets)
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and timestamp_text and signatures):
        raise WebhookVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature header"
        )
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    skew = (time.time() if now is None else now) - timestamp
    if skew > tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is too old")
    if skew < -tolerance_s:
        raise WebhookVerificationError("webhook-timestamp is in the future")
    raw = body.encode() if isinstance(body, str) else body
    signed = f"{msg_id}.{timestamp_text}.".encode() + raw
    expected = [hmac.new(key, signed, hashlib.sha256).digest() for key in keys]
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != SIGNATURE_VERSION:
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if any(hmac.compare_digest(candidate, digest) for digest in expected):
            try:
                parsed: dict[str, Any] = json.loads(raw)
            except ValueError:
                raise WebhookVerificationError("the body is not JSON") from None
            return parsed
    raise WebhookVerificationError("no matching signature")
