"""The Helm chart: lint, then render with Helm's own engine and read the manifests.

helm-sdkpy has lint but no ``helm template``; the chart is rendered by a real ``helm install``
against :mod:`tests.deploy.fake_kube`, which returns Helm's manifest and NOTES.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.settings import RelaySettings
from tests.deploy.fake_kube import fake_kube_api

if os.environ.get("CI") and importlib.util.find_spec("helm_sdkpy") is None:
    # CI installs it (.ci/run): there, a missing Helm library is a failure, not a skip.
    raise RuntimeError("CI: helm-sdkpy is missing; .ci/run installs it")
helm = pytest.importorskip(
    "helm_sdkpy", reason="needs helm-sdkpy: pip install --ignore-requires-python helm-sdkpy"
)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "mindvideo-relay"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "mindvideo-relay.json"
ALERTS = REPO / "deploy" / "alerts.yml"
NAMESPACE = "relay"
RELEASE = "prod"
FULLNAME = "prod-mindvideo-relay"
LINT_WARNING = 2  # Helm's support.WarningSev; 1 is INFO ("icon is recommended")
SETTINGS_ENV = {f"RELAY_{name.upper()}" for name in RelaySettings.model_fields}

Manifest = dict[str, Any]


@dataclass
class Release:
    manifests: list[Manifest]
    notes: str

    def one(self, kind: str) -> Manifest:
        (found,) = [m for m in self.manifests if m["kind"] == kind]
        return found

    def kinds(self) -> set[str]:
        return {m["kind"] for m in self.manifests}


@pytest.fixture(autouse=True)
def helm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep Helm's config, cache and data directories out of the user's home."""
    for name in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("KUBECONFIG", raising=False)


async def _lint(chart: Path) -> dict[str, Any]:
    result: dict[str, Any] = await helm.Lint(helm.Configuration(namespace=NAMESPACE)).run(
        str(chart)
    )
    return result


async def _render(tmp_path: Path, values: Mapping[str, Any] | None = None) -> Release:
    async with fake_kube_api(tmp_path) as kubeconfig:
        config = helm.Configuration(namespace=NAMESPACE, kubeconfig=str(kubeconfig))
        release = await helm.Install(config).run(
            RELEASE, str(CHART), values=dict(values or {}), wait=False, timeout=30
        )
    manifests = [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]
    return Release(manifests, release["info"]["notes"])


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _container(release: Release) -> dict[str, Any]:
    (container,) = release.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _env(release: Release) -> dict[str, dict[str, Any]]:
    entries = _container(release)["env"]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"duplicate env: {names}"
    return {entry["name"]: entry for entry in entries}


SCALING = {
    "keda": {"enabled": True, "maxReplicaCount": 12, "lagThreshold": 250},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "config": {"kafka_bootstrap_servers": "kafka-0.kafka:9092,kafka-1.kafka:9092"},
}
SIZED = {
    "replicaCount": 6,
    "image": {"repository": "registry.example.com/mindvideo-relay", "tag": "1.2.3"},
    "config": {
        "shutdown_grace_s": 120,
        "max_record_bytes": 1048576,
        "webhook_allowed_hosts": "hooks.internal,10.20.0.0/16",
        "kafka_enable_idempotence": False,
    },
    "secrets": {"webhookSecrets": {"existingSecret": ""}},
    "extraEnv": [
        {
            "name": "RELAY_REDIS_URL",
            "valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "url"}},
        },
        {"name": "OTEL_SERVICE_NAME", "value": "mindvideo-relay"},
    ],
    "podDisruptionBudget": {"minAvailable": 2},
    "grafanaDashboard": {"enabled": False},
}


async def test_lint_is_clean_with_default_values() -> None:
    result = await _lint(CHART)
    assert result["TotalChartsLinted"] == 1
    assert not result["Errors"]
    assert [m for m in result["Messages"] if m["Severity"] >= LINT_WARNING] == []


@pytest.mark.parametrize("overrides", [SCALING, SIZED], ids=["keda-servicemonitor", "sized"])
async def test_lint_is_clean_with_custom_values(
    tmp_path: Path, overrides: Mapping[str, Any]
) -> None:
    # Lint reads the chart's own values.yaml only: lint a copy whose values are the overrides.
    chart = tmp_path / "mindvideo-relay"
    shutil.copytree(CHART, chart)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    (chart / "values.yaml").write_text(yaml.safe_dump(_merge(defaults, overrides)))
    result = await _lint(chart)
    assert not result["Errors"]
    assert [m for m in result["Messages"] if m["Severity"] >= LINT_WARNING] == []


async def test_default_render(tmp_path: Path) -> None:
    release = await _render(tmp_path)
    assert release.kinds() == {
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    }
    for manifest in release.manifests:
        assert len(manifest["metadata"]["name"]) <= 63
        assert manifest["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE

    deployment = release.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert release.one("Service")["spec"]["selector"] == selector
    assert release.one("PodDisruptionBudget")["spec"] == {
        "selector": {"matchLabels": selector},
        "maxUnavailable": 1,
    }

    container = _container(release)
    assert container["image"] == "mindvideo-relay:0.1.0"
    assert container["args"] == ["run"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]

    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]

    env = _env(release)
    assert set(env) <= SETTINGS_ENV, set(env) - SETTINGS_ENV
    assert env["RELAY_HTTP_PORT"]["value"] == "8080"
    assert env["RELAY_KAFKA_BOOTSTRAP_SERVERS"]["value"] == "kafka:9092"
    assert env["RELAY_LOG_FORMAT"]["value"] == "json"
    assert "RELAY_WEBHOOK_DEFAULT_URL" not in env, "empty values leave the relay's default"
    assert env["RELAY_MINDVIDEO_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "mindvideo-relay", "key": "mindvideo-api-key"}
    }
    assert env["RELAY_WEBHOOK_SECRETS"]["valueFrom"] == {
        "secretKeyRef": {"name": "mindvideo-relay", "key": "webhook-secrets"}
    }
    assert all("value" in e or "valueFrom" in e for e in env.values())
    grace_s = float(env["RELAY_SHUTDOWN_GRACE_S"]["value"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace_s

    dashboard = release.one("ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["mindvideo-relay.json"]) == json.loads(
        DASHBOARD.read_text()
    )
    assert "kubectl -n relay get secret mindvideo-relay" in release.notes


async def test_keda_and_service_monitor(tmp_path: Path) -> None:
    release = await _render(tmp_path, SCALING)
    assert {"ScaledObject", "ServiceMonitor"} <= release.kinds()
    assert "replicas" not in release.one("Deployment")["spec"], "KEDA owns the replica count"

    scaled = release.one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 12)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert metadata["bootstrapServers"] == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert metadata["consumerGroup"] == "mindvideo-relay"
    assert metadata["topic"] == "mindvideo.requests"
    assert metadata["lagThreshold"] == "250"
    assert all(isinstance(v, str) for v in metadata.values()), "KEDA metadata values are strings"

    monitor = release.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"] == release.one("Service")["spec"]["selector"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert "KEDA scales 1..12 replicas" in release.notes

    rule = release.one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = yaml.safe_load(ALERTS.read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "the chart ships deploy/alerts.yml as is"


async def test_replicas_extra_env_and_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = await _render(tmp_path, SIZED)
    assert "ConfigMap" not in release.kinds()
    deployment = release.one("Deployment")
    assert deployment["spec"]["replicas"] == 6
    assert _container(release)["image"] == "registry.example.com/mindvideo-relay:1.2.3"
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 135
    assert release.one("PodDisruptionBudget")["spec"]["minAvailable"] == 2

    env = _env(release)
    # Large whole numbers must not come out in e-notation ("1.048576e+06").
    assert env["RELAY_MAX_RECORD_BYTES"]["value"] == "1048576"
    assert env["RELAY_SHUTDOWN_GRACE_S"]["value"] == "120"
    assert env["RELAY_KAFKA_ENABLE_IDEMPOTENCE"]["value"] == "false"
    assert env["RELAY_WEBHOOK_ALLOWED_HOSTS"]["value"] == "hooks.internal,10.20.0.0/16"
    assert "RELAY_WEBHOOK_SECRETS" not in env
    assert env["OTEL_SERVICE_NAME"]["value"] == "mindvideo-relay"
    # A Redis URL with a password comes from a Secret, in place of config.redis_url.
    assert env["RELAY_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-auth",
        "key": "url",
    }
    assert "value" not in env["RELAY_REDIS_URL"]

    # The rendered values are what the relay itself accepts from its environment.
    for name in [n for n in os.environ if n.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    for name, entry in env.items():
        if "value" in entry:
            monkeypatch.setenv(name, entry["value"])
    settings = RelaySettings()
    assert settings.max_record_bytes == 1048576
    assert settings.kafka_enable_idempotence is False
    assert settings.webhook_allowed_hosts == ["hooks.internal", "10.20.0.0/16"]
    assert settings.webhook_retry_schedule[:3] == [0.0, 5.0, 300.0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"terminationGracePeriodSeconds": 30}, "must exceed config.shutdown_grace_s"),
        ({"config": {"mindvideo_api_key": "mv_live_x"}}, "is a secret"),
        ({"config": {"http_port": 9000}}, "set by the chart from containerPort"),
        ({"secrets": {"mindvideoApiKey": {"existingSecret": ""}}}, "existingSecret is required"),
    ],
    ids=["grace-too-short", "secret-in-config", "port-in-config", "no-api-key-secret"],
)
async def test_misconfiguration_fails_the_render(
    tmp_path: Path, overrides: Mapping[str, Any], message: str
) -> None:
    with pytest.raises(helm.InstallError, match=message):
        await _render(tmp_path, overrides)


def test_chart_alerts_are_the_deploy_alerts() -> None:
    copy_in_chart = CHART / "alerts" / "alerts.yml"
    assert copy_in_chart.read_bytes() == ALERTS.read_bytes(), (
        "Helm cannot read outside the chart: copy deploy/alerts.yml to helm/mindvideo-relay/alerts/"
    )


def test_chart_dashboard_is_the_deploy_dashboard() -> None:
    copy_in_chart = CHART / "dashboards" / "mindvideo-relay.json"
    assert copy_in_chart.read_bytes() == DASHBOARD.read_bytes(), (
        "Helm cannot read outside the chart: copy deploy/grafana/dashboards/mindvideo-relay.json"
        " to helm/mindvideo-relay/dashboards/"
    )
