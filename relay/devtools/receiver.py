"""The webhook receiver ``relay dev`` runs: it verifies each delivery and prints one line for it.

It is also a worked example of a receiver: verify the raw body with ``relay.webhooks.verify``,
answer 2xx quickly, deduplicate by ``webhook-id``. ``python -m relay.devtools.receiver`` serves it
on its own (deploy/compose.yaml runs it beside the relay).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from relay.exceptions import WebhookVerificationError
from relay.models import decode_secret
from relay.webhooks.verify import verify_webhook

WEBHOOK_PATH = "/webhooks"
DEFAULT_PORT = 8070
EXIT_USAGE = 2


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


def main(argv: list[str] | None = None) -> int:
    """Serve the receiver until interrupted. The secret is ``--secret`` or else the first entry of
    ``RELAY_WEBHOOK_SECRETS``, so a receiver beside a relay verifies what that relay signs."""
    parser = argparse.ArgumentParser(
        prog="python -m relay.devtools.receiver",
        description="Verify mindvideo-relay webhooks and print one line for each.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument("--secret", help="whsec_... (default: the first of RELAY_WEBHOOK_SECRETS)")
    args = parser.parse_args(argv)
    configured = os.environ.get("RELAY_WEBHOOK_SECRETS", "").split(",")
    secret = (args.secret or configured[0]).strip()
    if not secret:
        print("receiver: no secret: give --secret or set RELAY_WEBHOOK_SECRETS", file=sys.stderr)
        return EXIT_USAGE
    try:
        decode_secret(secret)
    except ValueError as exc:
        print(f"receiver: --secret or RELAY_WEBHOOK_SECRETS: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"webhook receiver on http://{args.host}:{args.port}{WEBHOOK_PATH}",
        file=sys.stderr,
        flush=True,
    )
    web.run_app(build_receiver(secret), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
