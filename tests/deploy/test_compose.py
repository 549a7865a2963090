"""deploy/compose.yaml and its Prometheus and Grafana files: valid, and pointing at each other.

No Docker engine here, so the stack is not started; the file is validated against the Compose
Specification's JSON schema, checked for one build per image, and its relay and receiver are run
as local processes with the file's own settings: a submitted request arrives as a verified webhook.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from relay.devtools import receiver as dev_receiver
from relay.devtools.processes import ManagedProcess, free_port, wait_for_port
from relay.settings import RelaySettings
from relay.sim import cli as sim_cli
from tests.deploy.dockerfile import parse_dockerfile
from tests.support.pipeline import SIM_API_KEY, Pipeline

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
EXPECTED_SERVICES = {"kafka", "redis", "sim", "receiver", "relay", "prometheus", "grafana"}
MODEL = "apimart-doubao-seedance-4-0"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    assert isinstance(command, list), "commands are exec-form lists"
    return [str(part) for part in command]


def _published(service: dict[str, Any]) -> dict[int, int]:
    """host port -> container port."""
    ports: dict[int, int] = {}
    for entry in service.get("ports", []):
        host, _, container = str(entry).rpartition(":")
        ports[int(host)] = int(container)
    return ports


def test_services_and_dependencies(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == EXPECTED_SERVICES
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for dep, condition in _depends_on(service).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s healthcheck"
    assert set(_depends_on(services["relay"])) == {"kafka", "redis", "sim", "receiver"}


def test_the_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    """The Compose Specification's own JSON schema, as vendored by check-jsonschema."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(
        schema, format_checker=jsonschema.FormatChecker()
    )
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []
    broken = {**compose, "services": {**compose["services"], "relay": {"imagee": "typo"}}}
    assert list(validator.iter_errors(broken)), "the schema must refuse an unknown key"


def test_one_build_per_image(services: dict[str, dict[str, Any]]) -> None:
    """Compose builds every ``build:`` in parallel: two builds of one tag race ("image already
    exists"). One service builds; the others run its tag and must never try to pull it."""
    builders = {name: s for name, s in services.items() if "build" in s}
    built_tags = [s.get("image", f"mindvideo-relay-{name}") for name, s in builders.items()]
    assert len(built_tags) == len(set(built_tags)), f"a tag is built twice: {built_tags}"
    assert list(builders) == ["relay"], "one build for the whole stack"
    for name, service in services.items():
        if service.get("image") in built_tags and name not in builders:
            assert service.get("pull_policy") == "never", f"{name} would pull a local tag"
    assert {n for n, s in services.items() if s.get("image") in built_tags} == {
        "relay",
        "sim",
        "receiver",
    }

    runtime = parse_dockerfile(REPO / "Dockerfile")[-1]
    (exposed,) = (int(i.args) for i in runtime.all("EXPOSE"))
    build = services["relay"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == REPO
    assert (context / build.get("dockerfile", "Dockerfile")).is_file()
    assert _command(services["relay"]) == ["run"]
    assert exposed in _published(services["relay"]).values()


def test_ports_are_unique(services: dict[str, dict[str, Any]]) -> None:
    host_ports = [port for service in services.values() for port in _published(service)]
    assert len(host_ports) == len(set(host_ports))


def test_mounted_files_exist(compose: dict[str, Any], services: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in named, f"{name} uses undeclared volume {source}"


def test_relay_environment_is_valid_settings(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {k: str(v) for k, v in services["relay"]["environment"].items()}
    known = {f"RELAY_{name.upper()}" for name in RelaySettings.model_fields}
    assert set(env) <= known, f"not relay settings: {set(env) - known}"
    for name in [n for n in os.environ if n.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = RelaySettings()

    # Kafka: the relay's bootstrap is the broker's internal advertised listener.
    kafka_env = {k: str(v) for k, v in services["kafka"]["environment"].items()}
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    inter_broker = kafka_env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert f"{inter_broker}://{settings.kafka_bootstrap_servers}" in advertised
    host_listener = next(a for a in advertised if "localhost" in a)
    assert int(host_listener.rsplit(":", 1)[1]) in _published(services["kafka"])

    # Redis and the simulator: the URLs name those services and the ports they listen on.
    assert urlsplit(settings.redis_url).hostname == "redis"
    base = urlsplit(settings.mindvideo_base_url)
    assert base.hostname == "sim"
    sim_command = _command(services["sim"])
    assert sim_command[0] == "sim"
    assert sim_command[sim_command.index("--port") + 1] == str(base.port)
    assert sim_command[sim_command.index("--host") + 1] == "0.0.0.0"
    sim_keys = str(services["sim"]["environment"]["RELAY_SIM_API_KEY"]).split(",")
    assert settings.mindvideo_api_key.get_secret_value() in sim_keys
    assert settings.http_port in _published(services["relay"]).values()
    assert settings.kafka_create_topics, "a fresh broker has no topics"
    grace_s = float(services["relay"]["stop_grace_period"].removesuffix("s"))
    assert grace_s > settings.shutdown_grace_s

    # Webhooks: every result goes to the receiver, which the SSRF policy lets through by name,
    # and the receiver verifies with the secret the relay signs with.
    (default_url,) = settings.webhook_default_urls
    hook = urlsplit(default_url)
    assert hook.hostname == "receiver"
    assert hook.path == dev_receiver.WEBHOOK_PATH
    receiver_command = _command(services["receiver"])
    assert receiver_command[receiver_command.index("--port") + 1] == str(hook.port)
    assert receiver_command[receiver_command.index("--host") + 1] == "0.0.0.0"
    assert "receiver" in settings.webhook_allowed_hosts
    receiver_secret = str(services["receiver"]["environment"]["RELAY_WEBHOOK_SECRETS"])
    assert receiver_secret.split(",")[0] == settings.webhook_secrets[0].get_secret_value()
    assert services["receiver"]["entrypoint"] == ["python", "-m", "relay.devtools.receiver"]


def test_simulator_flags_exist(services: dict[str, dict[str, Any]]) -> None:
    parser = argparse.ArgumentParser()
    sim_cli.add_arguments(parser)
    parser.parse_args(_command(services["sim"])[1:])  # exits on an unknown flag


@pytest.mark.integration
def test_prometheus_scrapes_the_relay(services: dict[str, dict[str, Any]]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mindvideo-relay"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in services
    assert int(port) in _published(services[host]).values()
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert (DEPLOY / mounts["/etc/prometheus/prometheus.yml"]).resolve() == (
        DEPLOY / "prometheus.yml"
    )
    promtool = shutil.which("promtool")
    if promtool:
        done = subprocess.run(
            [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_provisions_datasource_and_dashboard(services: dict[str, dict[str, Any]]) -> None:
    mounts = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in services["grafana"]["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource_file,) = (provisioning / "datasources").glob("*.yaml")
    (datasource,) = yaml.safe_load(datasource_file.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus"
    assert url.port in _published(services["prometheus"]).values()

    (provider_file,) = (provisioning / "dashboards").glob("*.yaml")
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    container_path = provider["options"]["path"]
    assert container_path in mounts, "the provider reads a directory that is not mounted"
    assert (mounts[container_path] / "mindvideo-relay.json").is_file()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{container_path}/mindvideo-relay.json"


def _local(value: str, addresses: dict[str, str]) -> str:
    """A Compose setting with its service names replaced by the local stand-ins' addresses."""
    for pattern, replacement in addresses.items():
        value = re.sub(pattern, replacement, value)
    return value


@pytest.mark.integration
async def test_the_stack_delivers_a_submitted_request_as_a_verified_webhook(
    services: dict[str, dict[str, Any]], pipeline: Pipeline, unique: str
) -> None:
    """``docker compose up`` without Docker: the receiver is started with the file's entrypoint,
    command and environment, the relay with the file's environment; only the service names and
    ports become this machine's (and the test's own topics, group and key prefix)."""
    receiver_port = free_port()
    sim = urlsplit(pipeline.sim_url)
    addresses = {
        r"\bkafka:9092\b": pipeline.bootstrap,
        r"^redis://redis:6379/0$": pipeline.redis_url,
        r"^http://sim:8090$": f"http://{sim.hostname}:{sim.port}",
        r"^http://receiver:8070": f"http://127.0.0.1:{receiver_port}",
        r"^receiver$": "127.0.0.1",
    }
    spec = services["receiver"]
    argv = [sys.executable, *spec["entrypoint"][1:], *_command(spec)]
    argv[argv.index("--port") + 1] = str(receiver_port)
    argv[argv.index("--host") + 1] = "127.0.0.1"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    receiver_env = {**base_env, **{k: str(v) for k, v in spec["environment"].items()}}
    receiver = ManagedProcess("compose-receiver", argv, pipeline.workdir, receiver_env)
    receiver.start()
    try:
        await wait_for_port("127.0.0.1", receiver_port, 30.0, receiver)
        env = {k: _local(str(v), addresses) for k, v in services["relay"]["environment"].items()}
        env.update(
            RELAY_MINDVIDEO_API_KEY=SIM_API_KEY,  # the test simulator's key, not the demo's
            RELAY_REQUEST_TOPIC=pipeline.requests_topic,
            RELAY_RESULT_TOPIC=pipeline.results_topic,
            RELAY_DEAD_LETTER_TOPIC=pipeline.dlq_topic,
            RELAY_KAFKA_GROUP_ID=pipeline.group_id,
            RELAY_REDIS_KEY_PREFIX=pipeline.redis_prefix,
            RELAY_LOG_FORMAT="json",
        )
        await pipeline.start_relay(**env)
        key = f"compose-{unique[:8]}"
        body = {"idempotency_key": key, "model": MODEL, "input": {"prompt": "a panda"}}
        await pipeline.produce([(key.encode(), json.dumps(body).encode())])
        (result,) = await pipeline.results({key}, 60.0)
        assert result.value["type"] == "task.succeeded"

        line = f"webhook verified: task.succeeded key={key}"
        deadline = time.monotonic() + 30.0
        while line not in receiver.log_path.read_text():
            assert time.monotonic() < deadline, receiver.log_path.read_text()
            await asyncio.sleep(0.2)
        assert "REJECTED" not in receiver.log_path.read_text()
    finally:
        receiver.stop()
