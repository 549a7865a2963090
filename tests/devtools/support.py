"""Helpers of the devtools tests: ports left in TIME-WAIT, as a server leaves them when it closes
its connections first (a Redis or broker stopped by Ctrl-C while clients are connected), and the
``export`` block of ``relay dev`` read as a shell would."""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

from relay.devtools.processes import LOCALHOST

TCP_TIME_WAIT = "06"


def leave_in_time_wait(port: int) -> None:
    """Listen on ``port``, take one connection, close it from the server side, stop listening:
    the server's end of that connection now waits in TIME-WAIT on ``port`` for a minute."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((LOCALHOST, port))
        server.listen(1)
        with socket.create_connection((LOCALHOST, port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server closes first: it is the side that waits
            assert client.recv(1) == b"", "the client sees the server's FIN"


def in_time_wait(port: int) -> bool:
    """Whether a TCP socket with local port ``port`` is in TIME-WAIT (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] == TCP_TIME_WAIT:
            return True
    return False


def plain_bind_fails(port: int) -> bool:
    """Whether binding ``port`` without address reuse fails (what the old port check did)."""
    with socket.socket() as sock:
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return True
    return False


def parse_exports(text: str) -> dict[str, str]:
    """The ``export RELAY_X=value`` lines in ``text``, as a shell would read them."""
    exports = {}
    for line in text.splitlines():
        if line.startswith("export RELAY_"):
            name, _, value = line.removeprefix("export ").partition("=")
            exports[name] = shlex.split(value)[0]
    return exports
