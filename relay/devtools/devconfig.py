"""What ``relay dev`` runs with: its own choices, the user's exported ``RELAY_*`` variables, and
the ``export`` block that lets other commands reach the stack.

A variable the user exported always wins over a choice of ``relay dev``'s (a shorter retry
schedule, a quicker poll, a secret of their own). Only what points at the services ``relay dev``
starts itself can disagree with it: a Kafka, Redis or MindVideo address on this machine is taken
as the port to start that service on; one elsewhere is refused with a message, as is an exported
value that contradicts a flag given on the command line.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from relay.configuration import variable_of
from relay.devtools.processes import LOCALHOST
from relay.devtools.receiver import new_secret
from relay.exceptions import ConfigurationError
from relay.logs import redact_url
from relay.settings import RelaySettings

DEV_API_KEY = "mv_test_local"
DEFAULT_KAFKA_PORT = 9092
DEFAULT_REDIS_PORT = 6390
DEFAULT_SIM_PORT = 8090
DEFAULT_HTTP_PORT = 8080
LOOPBACK_NAMES = frozenset({LOCALHOST, "localhost"})
# What the other commands need to reach the dev stack (relay submit, relay webhooks replay,
# relay reconcile, a producer or consumer of your own), in the order the export block prints them.
EXPORTED_SETTINGS = (
    "kafka_bootstrap_servers",
    "kafka_enable_idempotence",
    "request_topic",
    "result_topic",
    "dead_letter_topic",
    "webhook_dead_letter_topic",
    "redis_url",
    "redis_key_prefix",
    "mindvideo_base_url",
    "mindvideo_api_key",
    "webhook_secrets",
)


@dataclass(frozen=True)
class DevPorts:
    kafka: int
    redis: int
    sim: int
    http: int
    webhook: int

    @property
    def bootstrap(self) -> str:
        return f"{LOCALHOST}:{self.kafka}"

    @property
    def redis_url(self) -> str:
        return f"redis://{LOCALHOST}:{self.redis}/0"

    @property
    def sim_url(self) -> str:
        return f"http://{LOCALHOST}:{self.sim}"


@dataclass
class DevSettings:
    settings: RelaySettings
    # The variables the user exported that replaced a choice of relay dev's, for the banner.
    honoured: list[str] = field(default_factory=list)
    generated_secret: bool = False


def resolve_ports(args: argparse.Namespace, base: RelaySettings) -> DevPorts:
    """The ports of the dev services: a flag, else the exported setting, else the default."""
    problems: list[str] = []
    given = base.model_fields_set

    def pick(name: str, flag: str, default: int, port_of_setting: int | None, what: str) -> int:
        flag_value: int | None = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if name not in given:
            return default if flag_value is None else flag_value
        variable = f"{variable_of(name)}={_shown(getattr(base, name))}"
        if port_of_setting is None:
            problems.append(
                f"{variable} is not on this machine, but relay dev starts its own {what} on "
                f"{LOCALHOST}: unset it (relay run talks to an existing {what}) or point it at "
                f"{LOCALHOST}:<port>"
            )
            return default
        if flag_value is not None and flag_value != port_of_setting:
            problems.append(f"{variable} disagrees with {flag} {flag_value}: unset one")
        return port_of_setting

    ports = DevPorts(
        kafka=pick(
            "kafka_bootstrap_servers",
            "--kafka-port",
            DEFAULT_KAFKA_PORT,
            _loopback_port(f"kafka://{base.kafka_bootstrap_servers}"),
            "Kafka broker",
        ),
        redis=pick(
            "redis_url", "--redis-port", DEFAULT_REDIS_PORT, _redis_port(base.redis_url), "Redis"
        ),
        sim=pick(
            "mindvideo_base_url",
            "--sim-port",
            DEFAULT_SIM_PORT,
            _loopback_port(base.mindvideo_base_url),
            "MindVideo simulator",
        ),
        http=pick("http_port", "--http-port", DEFAULT_HTTP_PORT, base.http_port, "relay"),
        webhook=args.webhook_port,
    )
    if "mindvideo_api_key" in given and base.mindvideo_api_key.get_secret_value() != DEV_API_KEY:
        problems.append(
            f"RELAY_MINDVIDEO_API_KEY is set, but relay dev's simulator accepts only its own key "
            f"({DEV_API_KEY}): unset it"
        )
    tansu_idempotent = args.broker == "tansu" and base.kafka_enable_idempotence
    if "kafka_enable_idempotence" in given and tansu_idempotent:
        problems.append(
            "RELAY_KAFKA_ENABLE_IDEMPOTENCE=true, but Tansu refuses the idempotent producer: "
            "unset it or use --broker noida"
        )
    if problems:
        raise ConfigurationError(problems)
    return ports


def dev_settings(
    base: RelaySettings, ports: DevPorts, broker: str, webhook_url: str
) -> DevSettings:
    """``base`` (the user's environment) completed with relay dev's choices where they did not
    export one."""
    given = base.model_fields_set
    wiring: dict[str, Any] = {
        "kafka_bootstrap_servers": ports.bootstrap,
        "redis_url": ports.redis_url,
        "mindvideo_base_url": ports.sim_url,
        "mindvideo_api_key": SecretStr(DEV_API_KEY),
        "http_port": ports.http,
    }
    choices: dict[str, Any] = {
        # Tansu refuses aiokafka's idempotent producer; noida-db supports it.
        "kafka_enable_idempotence": broker == "noida",
        "kafka_session_timeout_ms": 6000,
        "mindvideo_poll_interval_s": 0.5,
        "http_host": LOCALHOST,
        "shutdown_grace_s": 2.0,
        "webhook_secrets": [SecretStr(new_secret())],
        "webhook_default_url": webhook_url,
        "webhook_allowed_hosts": [LOCALHOST],
        "webhook_retry_schedule": [0.0, 1.0, 5.0, 30.0],
    }
    update = dict(wiring)
    honoured = []
    for name, value in choices.items():
        if name in given:
            honoured.append(variable_of(name))
        else:
            update[name] = value
    if "webhook_default_url" not in given and LOCALHOST not in base.webhook_allowed_hosts:
        # The local receiver must stay reachable through the SSRF guard.
        update["webhook_allowed_hosts"] = [*base.webhook_allowed_hosts, LOCALHOST]
    settings = base.model_copy(update=update)
    return DevSettings(settings, honoured, generated_secret="webhook_secrets" not in given)


def export_block(dev: DevSettings) -> str:
    """``export`` lines for a shell: what other commands need to reach this dev stack.

    The webhook secret is printed when relay dev made it (a throwaway, and the user's own
    receiver needs it to verify); a secret the user exported is theirs and is not echoed. The
    MindVideo key is always the simulator's throwaway ``DEV_API_KEY`` (relay dev refuses any
    other), printed so that ``relay reconcile`` reaches the simulator.
    """
    s = dev.settings
    lines = []
    for name in EXPORTED_SETTINGS:
        variable = variable_of(name)
        if name == "webhook_secrets":
            if not dev.generated_secret:
                lines.append(f"# {variable}: yours, from the environment")
                continue
            value = ",".join(secret.get_secret_value() for secret in s.webhook_secrets)
        elif name == "mindvideo_api_key":
            value = s.mindvideo_api_key.get_secret_value()
        else:
            raw = getattr(s, name)
            value = str(raw).lower() if isinstance(raw, bool) else str(raw)
        lines.append(f"export {variable}={shlex.quote(value)}")
    return "\n".join(lines)


def honoured_summary(dev: DevSettings) -> list[str]:
    """``RELAY_X=value`` for each exported variable relay dev honoured (secrets masked)."""
    s = dev.settings
    return [
        f"{variable}={_shown(getattr(s, variable.removeprefix('RELAY_').lower()))}"
        for variable in dev.honoured
    ]


def _shown(value: object) -> str:
    if isinstance(value, SecretStr) or (
        isinstance(value, list) and value and isinstance(value[0], SecretStr)
    ):
        return "***"
    if isinstance(value, list):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    return redact_url(str(value))


def _loopback_port(url: str) -> int | None:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    if parts.hostname not in LOOPBACK_NAMES or port is None or "," in parts.netloc:
        return None
    return port


def _redis_port(url: str) -> int | None:
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.username or parts.password:
        return None
    if parts.path not in ("", "/", "/0"):
        return None
    return _loopback_port(url)
