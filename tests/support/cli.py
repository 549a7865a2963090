"""Run a ``relay`` command as an operator would, without blocking the tests' event loop (which
may be serving a receiver the command's work reaches)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import ManagedProcess

CLI_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 45.0


async def wait_for_exit(proc: ManagedProcess, timeout_s: float = EXIT_TIMEOUT_S) -> int | None:
    """The exit status of a process expected to stop by itself, ``None`` if it is still running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    return proc.returncode


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


async def run_relay(
    args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout_s: float = CLI_TIMEOUT_S
) -> CliResult:
    """``relay <args>`` in a child process; killed if it outlives ``timeout_s``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        env=dict(env),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr = await proc.communicate()
    except TimeoutError:
        proc.kill()
        stdout, stderr = await proc.communicate()
        raise AssertionError(
            f"relay {' '.join(args)} ran over {timeout_s:.0f}s:\n{stdout.decode()}{stderr.decode()}"
        ) from None
    assert proc.returncode is not None
    return CliResult(proc.returncode, stdout.decode(), stderr.decode())
