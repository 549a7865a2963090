"""A test-only authenticating front for an unauthenticated Kafka broker.

No broker installable here authenticates for real (Tansu never serves TLS and has no SCRAM;
noida-db offers only PLAIN and takes any password), so the Kafka security tests put this front
before noida-db. It listens on a port of its own and

* terminates TLS with a certificate from ``tests/support/tls.py`` (with ``--client-ca``, only
  for clients whose certificate that CA signed: mutual TLS);
* with ``--mechanism``, performs SASL before it forwards anything: ApiVersions is answered
  (the broker's list plus SaslHandshake and SaslAuthenticate), SaslHandshake picks PLAIN,
  SCRAM-SHA-256 or SCRAM-SHA-512, SaslAuthenticate runs the server side of that mechanism
  (``tests/support/scram.py``); a wrong password gets error 58 and the connection is closed,
  and any other request before a login disconnects the client, as Kafka does;
* then relays frames to the broker both ways, rewriting Metadata and FindCoordinator
  responses so that every broker and coordinator is the front itself: clients never learn the
  broker's own address.

It runs as a process of its own (``python -m tests.support.kafka_auth_proxy``, started by
:func:`kafka_auth_front`), so the tests' event loop never stands between a relay and its
broker. Each login is one log line: ``authenticated <user> via <mechanism>`` or
``authentication failed via <mechanism>: <reason>``; no password is ever logged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import ssl
import struct
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import kafka_wire as wire
from tests.support.scram import MECHANISMS, AuthenticationFailed, Users
from tests.support.services import LOCALHOST, ManagedProcess, free_port, wait_for_port
from tests.support.tls import TlsFiles

log = logging.getLogger("kafka-front")
REPO_ROOT = Path(__file__).resolve().parents[2]
FRONT_START_TIMEOUT_S = 20.0
_REWRITTEN = (wire.API_METADATA, wire.API_FIND_COORDINATOR, wire.API_API_VERSIONS)


class KafkaAuthFront:
    """Serves clients on ``port`` and forwards authenticated ones to ``upstream``."""

    def __init__(
        self,
        upstream: tuple[str, int],
        port: int,
        *,
        mechanisms: Sequence[str],
        users: dict[str, str],
        tls: ssl.SSLContext | None,
    ) -> None:
        self.upstream = upstream
        self.port = port
        self.mechanisms = list(mechanisms)
        self.users = Users(users)
        self.tls = tls

    async def serve_forever(self) -> None:
        server = await asyncio.start_server(self._connection, LOCALHOST, self.port, ssl=self.tls)
        log.info("listening on %s:%d, forwarding to %s:%d", LOCALHOST, self.port, *self.upstream)
        async with server:
            await server.serve_forever()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        try:
            if self.mechanisms and not await self._login(
                reader, writer, upstream_reader, upstream_writer
            ):
                return
            await self._relay(reader, writer, upstream_reader, upstream_writer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return  # the client or the broker hung up
        except wire.UnsupportedVersion as exc:
            log.error("cannot rewrite %s: disconnecting the client", exc)
        finally:
            for w in (writer, upstream_writer):
                w.close()
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await w.wait_closed()

    async def _login(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> bool:
        """The SASL exchange; ``True`` once the client has proved who it is."""
        exchange = None
        mechanism = ""
        while True:
            payload = await wire.read_frame(reader)
            header = wire.request_header(payload)
            if header.api_key == wire.API_API_VERSIONS:
                upstream_writer.write(wire.frame(payload))
                answer = await wire.read_frame(upstream_reader)
                writer.write(wire.frame(wire.rewrite_api_versions(answer, header.api_version)))
            elif header.api_key == wire.API_SASL_HANDSHAKE and exchange is None:
                mechanism = wire.handshake_mechanism(payload, header)
                offered = mechanism in self.mechanisms
                error = 0 if offered else wire.ERROR_UNSUPPORTED_SASL_MECHANISM
                writer.write(wire.frame(wire.handshake_response(header, error, self.mechanisms)))
                if not offered:
                    log.warning("refused SASL mechanism %s", mechanism)
                    await writer.drain()
                    return False
                exchange = self.users.exchange(mechanism)
            elif header.api_key == wire.API_SASL_AUTHENTICATE and exchange is not None:
                try:
                    token = exchange.step(wire.authenticate_token(payload, header))
                except AuthenticationFailed as exc:
                    log.warning("authentication failed via %s: %s", mechanism, exc)
                    message = (
                        "Authentication failed during authentication due to invalid "
                        f"credentials with SASL mechanism {mechanism}"
                    )
                    failure = wire.ERROR_SASL_AUTHENTICATION_FAILED
                    writer.write(
                        wire.frame(wire.authenticate_response(header, failure, message, b""))
                    )
                    await writer.drain()
                    return False
                writer.write(wire.frame(wire.authenticate_response(header, 0, None, token)))
                if exchange.done:
                    await writer.drain()
                    log.info("authenticated %s via %s", exchange.username, mechanism)
                    return True
            else:
                log.warning(
                    "disconnected a client that sent API key %d before authenticating",
                    header.api_key,
                )
                return False
            await writer.drain()

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream_reader: asyncio.StreamReader,
        upstream_writer: asyncio.StreamWriter,
    ) -> None:
        pending: dict[int, tuple[int, int]] = {}

        async def answers() -> None:
            while True:
                payload = await wire.read_frame(upstream_reader)
                (correlation_id,) = struct.unpack_from(">i", payload)
                api = pending.pop(correlation_id, None)
                if api is not None:
                    payload = wire.rewrite_response(payload, *api, LOCALHOST, self.port)
                writer.write(wire.frame(payload))
                await writer.drain()

        task = asyncio.create_task(answers())
        try:
            while not task.done():
                payload = await wire.read_frame(reader)
                header = wire.request_header(payload)
                if header.api_key in _REWRITTEN:
                    pending[header.correlation_id] = (header.api_key, header.api_version)
                upstream_writer.write(wire.frame(payload))
                await upstream_writer.drain()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # a rewrite failure surfaces here


@dataclass(frozen=True)
class Front:
    """A running front: where clients connect, and its log."""

    bootstrap: str
    process: ManagedProcess

    def log_text(self) -> str:
        return self.process.log_path.read_text(encoding="utf-8", errors="replace")

    def logins(self) -> list[str]:
        """``"<user> via <mechanism>"`` for every successful login so far."""
        marker = "authenticated "
        return [
            line.split(marker, 1)[1].strip()
            for line in self.log_text().splitlines()
            if marker in line
        ]


@asynccontextmanager
async def kafka_auth_front(
    upstream: str,
    workdir: Path,
    *,
    tls: TlsFiles | None,
    mechanisms: Sequence[str] = (),
    users: dict[str, str] | None = None,
    require_client_cert: bool = False,
) -> AsyncIterator[Front]:
    """Start a front before the broker at ``upstream``; stopped on leaving the block."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.support.kafka_auth_proxy", "--upstream", upstream]
    argv += ["--port", str(port)]
    for mechanism in mechanisms:
        argv += ["--mechanism", mechanism]
    for name, password in (users or {}).items():
        argv += ["--user", f"{name}:{password}"]
    if tls is not None:
        argv += ["--cert", str(tls.server_cert), "--key", str(tls.server_key)]
        if require_client_cert:
            argv += ["--client-ca", str(tls.ca)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = ManagedProcess(f"kafka-front-{port}", argv, workdir, env)
    proc.start()
    try:
        await wait_for_port(LOCALHOST, port, FRONT_START_TIMEOUT_S, proc)
        yield Front(f"{LOCALHOST}:{port}", proc)
    finally:
        proc.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--upstream", required=True, help="the broker, host:port")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mechanism", action="append", default=[], choices=MECHANISMS)
    parser.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD")
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    parser.add_argument("--client-ca", type=Path, help="require client certificates it signed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    host, _, port = args.upstream.rpartition(":")
    context = None
    if args.cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        if args.client_ca is not None:
            context.load_verify_locations(args.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    users = dict(user.split(":", 1) for user in args.user)
    front = KafkaAuthFront(
        (host, int(port)), args.port, mechanisms=args.mechanism, users=users, tls=context
    )
    asyncio.run(front.serve_forever())


if __name__ == "__main__":
    main()
