"""deploy/compose.yaml and its Prometheus and Grafana files: valid, and pointing at each other.

No Docker engine here, so the stack is not started; what is checked is what ``docker compose
config`` would, plus the wiring a person would otherwise find broken at ``up``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from relay.settings import RelaySettings
from relay.sim import cli as sim_cli
from tests.deploy.dockerfile import parse_dockerfile

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
EXPECTED_SERVICES = {"kafka", "redis", "sim", "relay", "prometheus", "grafana"}


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
    assert set(_depends_on(services["relay"])) == {"kafka", "redis", "sim"}


def test_builds_use_the_repository_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    runtime = parse_dockerfile(REPO / "Dockerfile")[-1]
    (exposed,) = (int(i.args) for i in runtime.all("EXPOSE"))
    for name in ("relay", "sim"):
        build = services[name]["build"]
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
