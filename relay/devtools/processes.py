"""Child processes we own: started in their own session, stopped by PID and process group.

Used by ``relay dev`` for its embedded broker, Redis, simulator and relay, and by the tests for
every real service they start. Readiness helpers fail fast with the child's log tail when it
exits instead of waiting out a timeout.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

LOCALHOST = "127.0.0.1"
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40

_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 1.0


class ServiceError(RuntimeError):
    """A local service could not be found, started or made ready; the message says why."""


class ServiceBinaryMissingError(ServiceError):
    """The executable for a service is not installed where it was looked for."""


class ServiceStartError(ServiceError):
    """The service process exited early or did not become ready in time."""


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port that was free a moment ago.

    The port is released before returning, so another process could take it first; callers that
    start a server on it find out through :func:`wait_for_port` failing fast on the exit.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def backoff_s(attempt: int) -> float:
    """Exponential delay with full jitter, capped, so retries neither spin nor stall."""
    ceiling = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * (2**attempt))
    return random.uniform(ceiling / 2, ceiling)


class ManagedProcess:
    """A child process with its output in a log file, stoppable by PID and process group.

    ``start()`` may be called again after the process has exited (for kill-and-restart tests);
    the log file is appended to, so one file tells the whole story.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self._env = dict(env) if env is not None else None
        self._popen: subprocess.Popen[bytes] | None = None
        # Set once the current run has been reaped and its group swept. After that the PID may
        # be handed to an unrelated process, so the group must never be signalled again.
        self._finished = False

    @property
    def pid(self) -> int:
        """PID of the current (or last) run; it is also the process group id."""
        if self._popen is None:
            raise ServiceError(f"{self.name} was never started")
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the process has ended, ``None`` while it runs or before start."""
        return None if self._popen is None else self._popen.poll()

    def is_running(self) -> bool:
        """Whether the process has been started and has not exited yet."""
        return self._popen is not None and self._popen.poll() is None

    def start(self) -> None:
        """Launch the process in a new session, stdout and stderr going to ``log_path``."""
        if self.is_running():
            raise ServiceError(f"{self.name} is already running as pid {self.pid}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            # The child keeps its own copy of the descriptor; ours is closed on leaving the block.
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env,
                start_new_session=True,
            )
        self._finished = False

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the process group, SIGKILL it if the leader is still alive after ``timeout_s``.

        Blocks until the leader is reaped (so its port is free again) and returns its exit
        status, or ``None`` if it was never started.
        """
        popen = self._popen
        if popen is None or self._finished:
            return None if popen is None else popen.returncode
        if popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                popen.wait()
        # Sweep anything the leader spawned and left behind in its group.
        self._signal_group(signal.SIGKILL)
        self._finished = True
        return popen.returncode

    def kill(self) -> int | None:
        """SIGKILL the process group at once (a crash, not a shutdown) and reap the leader."""
        popen = self._popen
        if popen is None or self._finished:
            return None if popen is None else popen.returncode
        self._signal_group(signal.SIGKILL)
        returncode = popen.wait()
        self._finished = True
        return returncode

    def log_tail(self, max_lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-max_lines:])

    def _signal_group(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            # The whole group has already exited: nothing left to signal.
            return

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        pid = self._popen.pid if self._popen is not None else None
        return f"ManagedProcess(name={self.name!r}, pid={pid}, returncode={self.returncode})"


def exited_error(proc: ManagedProcess, waiting_for: str) -> ServiceStartError:
    return ServiceStartError(
        f"{proc.name} exited with status {proc.returncode} while waiting for {waiting_for}; "
        f"argv={proc.argv}\nlog {proc.log_path} (tail):\n{proc.log_tail()}"
    )


def timeout_error(
    proc: ManagedProcess | None, waiting_for: str, timeout_s: float
) -> ServiceStartError:
    detail = "" if proc is None else f"\nlog {proc.log_path} (tail):\n{proc.log_tail()}"
    return ServiceStartError(f"gave up after {timeout_s:.0f}s waiting for {waiting_for}{detail}")


async def _accepts_connections(host: str, port: int) -> bool:
    """Whether one TCP connect succeeds within a second (the connection is closed again)."""
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection(host, port)
    except OSError:
        # Refused, or timed out (TimeoutError is an OSError): nothing is listening yet.
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def wait_for_port(
    host: str, port: int, timeout_s: float, proc: ManagedProcess | None = None
) -> None:
    """Return once a TCP connection to ``host:port`` succeeds.

    Raises :class:`ServiceStartError` with the log tail as soon as ``proc`` exits, rather than
    waiting out the timeout for a server that will never listen.
    """
    what = f"{host}:{port} to accept connections"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    attempt = 0
    while True:
        if proc is not None and proc.returncode is not None:
            raise exited_error(proc, what)
        if await _accepts_connections(host, port):
            return
        if loop.time() >= deadline:
            raise timeout_error(proc, what, timeout_s)
        await asyncio.sleep(backoff_s(attempt))
        attempt += 1
