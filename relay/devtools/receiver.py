"""The webhook receiver ``relay dev`` runs: it verifies each delivery and prints one line for it.

It is also a worked example of a receiver: verify the raw body with ``relay.webhooks.verify``,
answer 2xx quickly, deduplicate by ``webhook-id``.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from relay.exceptions import WebhookVerificationError
from relay.webhooks.verify import verify_webhook

WEBHOOK_PATH = "/webhooks"


def new_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def build_receiver(secret: str | Sequence[str]) -> web.Application:
    """The receiver app; ``secret`` may be several (a rotation): any one verifying is enough."""
    seen: set[str] = set()

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            result = verify_webhook(secret, request.headers, body)
        except WebhookVerificationError as exc:
            print(f"webhook REJECTED: {exc}", file=sys.stderr, flush=True)
            return web.json_response({"error": str(exc)}, status=400)
        webhook_id = request.headers.get("webhook-id", "")
        duplicate = " (duplicate, ignored)" if webhook_id in seen else ""
        seen.add(webhook_id)
        error = result.get("error") or {}
        detail = f" error={error.get('code')}" if error else f" cost={result.get('cost_actual')}"
        print(
            f"webhook verified: {result.get('type')} key={result.get('idempotency_key')}"
            f"{detail}{duplicate}",
            file=sys.stderr,
            flush=True,
        )
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post(WEBHOOK_PATH, receive)
    return app
