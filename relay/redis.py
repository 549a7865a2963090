"""Every Redis client of the relay, built one way from the settings (DESIGN §8).

``RELAY_REDIS_MODE`` picks the topology: ``standalone`` (one server, or a managed endpoint that
hides its replicas), ``cluster`` (Redis Cluster; ``RELAY_REDIS_URL`` names any node, the client
follows the slot map and its redirects) or ``sentinel`` (``RELAY_REDIS_SENTINELS`` are asked for
the master of ``RELAY_REDIS_SENTINEL_MASTER``, again after every failover). ``rediss://`` turns
on TLS, verified against the system's CAs or ``RELAY_REDIS_SSL_CAFILE``; in sentinel mode the URL
gives only that scheme, the credentials and the database, and the sentinels speak TLS when the
master does.

Every multi-key Lua script keeps its keys in one hash slot (``tests/test_redis_slots.py``
proves it for each registered script). One thing redis-py leaves out is made up here: a plain
pipeline loads the scripts it carries before it is sent, a cluster pipeline does not, so an
``EVALSHA`` of a script a node has not seen yet would fail with ``NOSCRIPT``.
:class:`ScriptingRedisCluster` loads them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias, cast
from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel
from redis.commands.core import AsyncScript
from redis.exceptions import ClusterError, NoScriptError, RedisClusterException
from redis.typing import ScriptTextT

from relay.kafka import unreadable

if TYPE_CHECKING:
    from relay.settings import RelaySettings

RedisClient: TypeAlias = Redis | RedisCluster

DEFAULT_MAX_CONNECTIONS = 100
POOL_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
SENTINEL_TIMEOUT_S = 1.0
SCHEMES = ("redis", "rediss", "unix")


def redis_client(
    settings: RelaySettings, *, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> RedisClient:
    """A client for ``settings``' Redis; it connects on first use.

    A standalone client shares at most ``max_connections`` connections and a burst waits for
    one (up to ``POOL_TIMEOUT_S``) rather than failing. Sentinel and cluster clients (redis-py
    has no waiting pool for them) hold up to ``max_connections`` (per node for a cluster), and a
    call beyond that fails like any Redis error; the stores batch their calls, so they hold a
    few connections, not one per request.
    """
    url = settings.redis_url
    tls: dict[str, Any] = {}
    if settings.redis_ssl_cafile is not None:
        tls["ssl_ca_certs"] = str(settings.redis_ssl_cafile)
    if settings.redis_mode == "cluster":
        return ScriptingRedisCluster.from_url(
            url,
            max_connections=max_connections,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            **tls,
        )
    if settings.redis_mode == "sentinel":
        return _sentinel_master(settings, max_connections, tls)
    return Redis(
        connection_pool=BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=POOL_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            **tls,
        )
    )


def _sentinel_master(
    settings: RelaySettings, max_connections: int, tls: dict[str, Any]
) -> SentinelMaster:
    # The URL's scheme, credentials and database; its host is the sentinels' to name.
    url = parse_url(settings.redis_url)
    if urlsplit(settings.redis_url).scheme == "rediss":
        tls["ssl"] = True
    sentinel_password = settings.redis_sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        [_host_port(address) for address in settings.redis_sentinels],
        sentinel_kwargs={
            "password": sentinel_password.get_secret_value() if sentinel_password else None,
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
            **tls,
        },
        username=url.get("username"),
        password=url.get("password"),
        db=url.get("db", 0),
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        **tls,
    )
    assert settings.redis_sentinel_master is not None  # topology_problems() made sure
    master: SentinelMaster = sentinel.master_for(
        settings.redis_sentinel_master, redis_class=SentinelMaster, max_connections=max_connections
    )
    master.sentinel_manager = sentinel
    return master


class SentinelMaster(Redis):
    """The master of a Sentinel-monitored group; closing it closes its sentinel connections."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = self.sentinel_manager
        for client in manager.sentinels if manager is not None else ():
            await client.aclose()


class ScriptingRedisCluster(RedisCluster):
    """A Redis Cluster client whose pipelines may carry the Lua scripts registered on it.

    Its failures are all ``RedisError``, as a standalone client's are: redis-py raises some
    cluster trouble (a slot no node serves during a reshard) outside that tree, and the relay's
    stores retry ``RedisError`` but would let anything else end their task.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scripts: dict[str, ScriptTextT] = {}
        self._loaded: set[str] = set()
        self._loading = asyncio.Lock()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        with _as_redis_error():
            return await super().execute_command(*args, **kwargs)

    def register_script(self, script: ScriptTextT) -> AsyncScript:  # type: ignore[override]
        registered = super().register_script(script)
        self._scripts[registered.sha] = script
        return registered

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        super().pipeline(transaction, shard_hint)  # refuses what a cluster cannot do
        return ScriptingClusterPipeline(self, transaction)  # type: ignore[abstract]

    async def load_scripts(self, shas: set[str], *, again: bool = False) -> None:
        """``SCRIPT LOAD`` on every primary the registered scripts among ``shas`` not loaded
        yet (``again``: also those loaded before, after a node answered ``NOSCRIPT``)."""
        async with self._loading:
            if again:
                self._loaded -= shas
            for sha in sorted(shas - self._loaded):
                if sha in self._scripts:
                    await self.script_load(self._scripts[sha])
                    self._loaded.add(sha)


class ScriptingClusterPipeline(ClusterPipeline):
    """Carries ``EVALSHA``, loads its scripts before it is sent, and resends the calls a node
    refused as ``NOSCRIPT`` (a call refused that way never ran, so sending it again is safe)."""

    def __init__(self, client: ScriptingRedisCluster, transaction: Any | None = None) -> None:
        super().__init__(client, transaction)
        self._scripting = client
        self._queued: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def execute_command(self, *args: Any, **kwargs: Any) -> ClusterPipeline:
        self._queued.append((args, dict(kwargs)))
        return super().execute_command(*args, **kwargs)

    def __await__(self) -> Generator[Any, None, ClusterPipeline]:
        """Awaiting a queued call yields the pipeline, as a plain pipeline does (a script call
        awaits it); redis-py's cluster pipeline would start afresh, dropping the calls queued."""
        return self._itself().__await__()

    async def _itself(self) -> ClusterPipeline:
        return self

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> ClusterPipeline:
        """Queued like any keyed command. redis-py refuses ``EVALSHA`` in a cluster pipeline
        because its pipeline would not load the script; this one does."""
        return self.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        queued, self._queued = self._queued, []
        shas = {str(args[1]) for args, _ in queued if str(args[0]).upper() == "EVALSHA"}
        await self._scripting.load_scripts(shas)
        with _as_redis_error():
            results = await super().execute(False, allow_redirections)
        refused = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if refused:
            await self._scripting.load_scripts(shas, again=True)
            for i in refused:
                args, kwargs = queued[i]
                super().execute_command(*args, **kwargs)
            with _as_redis_error():
                again = await super().execute(False, allow_redirections)
            for i, result in zip(refused, again, strict=True):
                results[i] = result
        if raise_on_error:
            for result in results:
                if isinstance(result, Exception):
                    raise result
        return results

    async def reset(self) -> None:  # type: ignore[override]
        self._queued = []
        await super().reset()  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def _as_redis_error() -> Iterator[None]:
    try:
        yield
    except RedisClusterException as exc:
        raise ClusterError(f"{type(exc).__name__}: {exc}") from exc


def pipeline(redis: RedisClient) -> Pipeline:
    """A non-transactional pipeline of either client. Typed as redis-py's plain pipeline: the
    cluster one has the same command methods, and carries scripts too (see above), but redis-py
    types a script's ``client`` argument as the plain kind only."""
    return cast(Pipeline, redis.pipeline(transaction=False))


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]"), int(port)


def topology_problems(settings: RelaySettings) -> list[str]:
    """Every Redis topology setting that cannot work as given, each naming its variable."""
    url = urlsplit(settings.redis_url)
    mode = settings.redis_mode
    problems: list[str] = []
    if url.scheme not in SCHEMES:
        problems.append("RELAY_REDIS_URL must start with redis://, rediss:// (TLS) or unix://")
    cafile = settings.redis_ssl_cafile
    if cafile is not None and url.scheme != "rediss":
        problems.append("RELAY_REDIS_SSL_CAFILE is set but RELAY_REDIS_URL is not rediss://")
    elif cafile is not None and (problem := unreadable(cafile)) is not None:
        problems.append(f"RELAY_REDIS_SSL_CAFILE={cafile}: {problem}")
    if mode != "standalone" and url.scheme == "unix":
        problems.append(f"RELAY_REDIS_MODE={mode} needs a redis:// or rediss:// URL")
    if mode == "cluster" and url.path.strip("/") not in ("", "0"):
        problems.append("RELAY_REDIS_MODE=cluster: Redis Cluster has only database 0")
    sentinel: dict[str, object] = {
        "RELAY_REDIS_SENTINELS": settings.redis_sentinels,
        "RELAY_REDIS_SENTINEL_MASTER": settings.redis_sentinel_master,
    }
    if mode == "sentinel":
        problems += [f"RELAY_REDIS_MODE=sentinel needs {k}" for k, v in sentinel.items() if not v]
        for address in settings.redis_sentinels:
            try:
                _host_port(address)
            except ValueError:
                problems.append(f"RELAY_REDIS_SENTINELS: {address!r} is not host:port")
    else:
        sentinel["RELAY_REDIS_SENTINEL_PASSWORD"] = settings.redis_sentinel_password
        problems += [
            f"{name} is set but RELAY_REDIS_MODE={mode} (sentinel uses it)"
            for name, value in sentinel.items()
            if value
        ]
    return problems
