"""The Helm chart: lint, then render with Helm's own engine and read the manifests.

helm-sdkpy has lint but no ``helm template``; the chart is rendered by a real ``helm install``
against :mod:`tests.deploy.fake_kube`, which returns Helm's manifest, hooks and NOTES. Helm also
validates the values against values.schema.json, as it does for a user.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.settings import RelaySettings
from tests.deploy import chart_schema
from tests.deploy.fake_kube import fake_kube_api

if os.environ.get("CI") and importlib.util.find_spec("helm_sdkpy") is None:
    # CI installs it (.ci/run): there, a missing Helm library is a failure, not a skip.
    raise RuntimeError("CI: helm-sdkpy is missing; .ci/run installs it")
helm = pytest.importorskip(
    "helm_sdkpy",
    reason="needs helm-sdkpy: pip install --ignore-requires-python 'helm-sdkpy==0.1.32'"
    " (README, Quickstart)",
)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "mindvideo-relay"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "mindvideo-relay.json"
ALERTS = REPO / "deploy" / "alerts.yml"
NAMESPACE = "relay"
RELEASE = "prod"
FULLNAME = "prod-mindvideo-relay"
LINT_WARNING = 2  # Helm's support.WarningSev; 1 is INFO ("icon is recommended")
# What the relay accepts, and the DESIGN §8 names that relay/settings.py may not have yet.
PENDING = set(chart_schema.PENDING_SETTINGS) - set(RelaySettings.model_fields)
SETTINGS_ENV = {f"RELAY_{name.upper()}" for name in set(RelaySettings.model_fields) | PENDING}
METADATA_ADDRESSES = {"169.254.0.0/16", "fd00:ec2::254/128"}

Manifest = dict[str, Any]


@dataclass
class Release:
    manifests: list[Manifest]
    hooks: list[Manifest]
    notes: str

    def one(self, kind: str) -> Manifest:
        (found,) = [m for m in self.manifests if m["kind"] == kind]
        return found

    def all(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def deployment(self, role: str) -> Manifest:
        (found,) = [m for m in self.all("Deployment") if m["metadata"]["name"].endswith(role)]
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


async def _render(
    tmp_path: Path, values: Mapping[str, Any] | None = None, release_name: str = RELEASE
) -> Release:
    async with fake_kube_api(tmp_path) as kubeconfig:
        config = helm.Configuration(namespace=NAMESPACE, kubeconfig=str(kubeconfig))
        release = await helm.Install(config).run(
            release_name, str(CHART), values=dict(values or {}), wait=False, timeout=30
        )
    manifests = [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]
    hooks = [yaml.safe_load(hook["manifest"]) for hook in release.get("hooks") or []]
    return Release(manifests, hooks, release["info"]["notes"])


def _merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _pod(deployment: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _container(deployment: Manifest) -> dict[str, Any]:
    (container,) = _pod(deployment)["containers"]
    assert isinstance(container, dict)
    return container


def _env(deployment: Manifest) -> dict[str, dict[str, Any]]:
    entries = _container(deployment)["env"]
    names = [entry["name"] for entry in entries]
    assert len(names) == len(set(names)), f"duplicate env: {names}"
    return {entry["name"]: entry for entry in entries}


def _accepted_by_the_relay(env: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The rendered plain values, read by the relay's own settings class."""
    for name in [n for n in os.environ if n.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    known = {f"RELAY_{name.upper()}" for name in RelaySettings.model_fields}
    for name, entry in env.items():
        if "value" in entry and name in known:
            monkeypatch.setenv(name, entry["value"])
    return RelaySettings()


SCALING = {
    "keda": {"enabled": True, "maxReplicaCount": 12},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "networkPolicy": {"enabled": True},
    "config": {"kafka_bootstrap_servers": "kafka-0.kafka:9092,kafka-1.kafka:9092"},
}
SIZED = {
    "replicaCount": 6,
    "webhooks": {"replicaCount": 3, "resources": {"requests": {"cpu": "100m"}}},
    "image": {"repository": "registry.example.com/mindvideo-relay", "tag": "1.2.3"},
    "config": {
        "shutdown_grace_s": 120,
        "max_record_bytes": 1048576,
        "webhook_allowed_hosts": ["hooks.internal", "10.20.0.0/16"],
        "webhook_retry_schedule": [0, 5, 300.5],
        "kafka_enable_idempotence": False,
        # No signing secret: the relay (and the chart) need the explicit choice to go unsigned.
        "webhook_allow_unsigned": True,
    },
    "secrets": {
        "webhookSecrets": {"existingSecret": ""},
        "httpToken": {"existingSecret": "status-page", "key": "token"},
    },
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
CONNECTED = {
    "config": {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "relay",
        "redis_url": "rediss://redis:6379/0",
        "redis_mode": "sentinel",
        "redis_sentinels": ["sentinel-0:26379", "sentinel-1:26379"],
        "redis_sentinel_master": "mymaster",
    },
    "secrets": {
        "kafkaSaslPassword": {"existingSecret": "kafka-user", "key": "password"},
        "redisSentinelPassword": {"existingSecret": "redis-auth", "key": "sentinel"},
    },
    "kafkaTls": {
        "existingSecret": "kafka-tls",
        "caKey": "ca.crt",
        "certKey": "user.crt",
        "keyKey": "user.key",
    },
    "redisTls": {"existingSecret": "redis-ca", "caKey": "ca.pem"},
}


async def test_lint_is_clean_with_default_values() -> None:
    result = await _lint(CHART)
    assert result["TotalChartsLinted"] == 1
    assert not result["Errors"]
    assert [m for m in result["Messages"] if m["Severity"] >= LINT_WARNING] == []


@pytest.mark.parametrize(
    "overrides", [SCALING, SIZED, CONNECTED], ids=["scaling", "sized", "connected"]
)
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


async def test_default_render_is_two_deployments_one_service(tmp_path: Path) -> None:
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

    requests, webhooks = release.deployment("requests"), release.deployment("webhooks")
    assert requests["metadata"]["name"] == f"{FULLNAME}-requests"
    assert webhooks["metadata"]["name"] == f"{FULLNAME}-webhooks"
    assert requests["spec"]["replicas"] == 2
    assert webhooks["spec"]["replicas"] == 2
    assert _env(requests)["RELAY_ROLE"]["value"] == "requests"
    assert _env(webhooks)["RELAY_ROLE"]["value"] == "webhooks"

    service_selector = release.one("Service")["spec"]["selector"]
    selectors = []
    for deployment in (requests, webhooks):
        selector = deployment["spec"]["selector"]["matchLabels"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        assert service_selector.items() <= pod_labels.items(), "the Service reaches both roles"
        selectors.append(selector)
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert selectors[0] != selectors[1], "each Deployment owns only its own pods"
    budgets = release.all("PodDisruptionBudget")
    assert sorted(
        b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for b in budgets
    ) == ["requests", "webhooks"]
    assert all(b["spec"]["maxUnavailable"] == 1 for b in budgets)

    container = _container(requests)
    assert container["image"] == "mindvideo-relay:0.1.0"
    assert container["args"] == ["run"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]

    pod = _pod(requests)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]

    env = _env(requests)
    assert set(env) <= SETTINGS_ENV, set(env) - SETTINGS_ENV
    assert env["RELAY_HTTP_PORT"]["value"] == "8080"
    assert env["RELAY_KAFKA_BOOTSTRAP_SERVERS"]["value"] == "kafka:9092"
    assert env["RELAY_LOG_FORMAT"]["value"] == "json"
    assert "RELAY_WEBHOOK_DEFAULT_URL" not in env, "empty values leave the relay's default"
    assert "RELAY_KAFKA_SECURITY_PROTOCOL" not in env, "empty values leave the relay's default"
    assert env["RELAY_MINDVIDEO_API_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "mindvideo-relay", "key": "mindvideo-api-key"}
    }
    assert env["RELAY_WEBHOOK_SECRETS"]["valueFrom"] == {
        "secretKeyRef": {"name": "mindvideo-relay", "key": "webhook-secrets"}
    }
    assert "RELAY_HTTP_TOKEN" not in env
    assert all("value" in e or "valueFrom" in e for e in env.values())
    # The dispatcher never calls MindVideo: it does not get the key (test_helm_ops.py).
    role_only = {"RELAY_ROLE", "RELAY_MINDVIDEO_API_KEY"}
    assert {k: v for k, v in env.items() if k not in role_only} == {
        k: v for k, v in _env(webhooks).items() if k not in role_only
    }, "both roles run the same settings"
    grace_s = float(env["RELAY_SHUTDOWN_GRACE_S"]["value"])
    assert pod["terminationGracePeriodSeconds"] > grace_s

    dashboard = release.one("ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["mindvideo-relay.json"]) == json.loads(
        DASHBOARD.read_text()
    )
    assert "kubectl -n relay get secret mindvideo-relay" in release.notes
    assert "helm test prod -n relay" in release.notes


async def test_keda_scales_only_the_request_pipeline(tmp_path: Path) -> None:
    release = await _render(tmp_path, SCALING)
    assert {"ScaledObject", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"} <= release.kinds()
    requests, webhooks = release.deployment("requests"), release.deployment("webhooks")
    assert "replicas" not in requests["spec"], "KEDA owns the request pipeline's replica count"
    assert webhooks["spec"]["replicas"] == 2, "the dispatcher keeps its replicas"

    scaled = release.one("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{FULLNAME}-requests",
    }
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 12)
    assert scaled["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 2}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metricType"] == "AverageValue", "KEDA's fallback needs AverageValue"
    metadata = trigger["metadata"]
    assert metadata["bootstrapServers"] == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert metadata["consumerGroup"] == "mindvideo-relay"
    assert metadata["topic"] == "mindvideo.requests"
    assert metadata["offsetResetPolicy"] == "earliest", "the relay's consumer starts at earliest"
    # Lag includes work in flight: the target is 80% of what one replica holds (5000).
    assert metadata["lagThreshold"] == "4000"
    assert all(isinstance(v, str) for v in metadata.values()), "KEDA metadata values are strings"
    assert "KEDA scales the request pipeline 1..12 replicas" in release.notes

    monitor = release.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"] == release.one("Service")["spec"]["selector"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert {"targetLabel": "job", "replacement": "mindvideo-relay"} in endpoint["relabelings"]

    rule = release.one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = yaml.safe_load(ALERTS.read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "the chart ships deploy/alerts.yml as is"


@pytest.mark.parametrize(
    ("keda", "max_in_flight", "threshold"),
    [
        ({}, 1000, "800"),
        ({"lagThreshold": 600}, 1000, "600"),
        ({"lagThreshold": "250"}, None, "250"),
    ],
)
async def test_lag_threshold_is_derived_from_the_in_flight_bound(
    tmp_path: Path, keda: dict[str, Any], max_in_flight: int | None, threshold: str
) -> None:
    values = {"keda": {"enabled": True, **keda}, "config": {"max_in_flight": max_in_flight}}
    release = await _render(tmp_path, values)
    (trigger,) = release.one("ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["lagThreshold"] == threshold


async def test_job_name_follows_into_the_alerts(tmp_path: Path) -> None:
    values = {
        "serviceMonitor": {"enabled": True, "jobName": "relay-blue"},
        "prometheusRule": {"enabled": True},
    }
    release = await _render(tmp_path, values)
    rules = release.one("PrometheusRule")["spec"]["groups"][0]["rules"]
    (down,) = [r for r in rules if r["alert"] == "MindVideoRelayDown"]
    assert 'up{job="relay-blue"}' in down["expr"]
    (endpoint,) = release.one("ServiceMonitor")["spec"]["endpoints"]
    assert {"targetLabel": "job", "replacement": "relay-blue"} in endpoint["relabelings"]


async def test_network_policy_blocks_metadata_addresses(tmp_path: Path) -> None:
    brokers = [{"namespaceSelector": {"matchLabels": {"name": "kafka"}}}]
    values = {"networkPolicy": {"enabled": True, "kafka": {"to": brokers, "ports": [9094]}}}
    policy = (await _render(tmp_path, values)).one("NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "mindvideo-relay",
        "app.kubernetes.io/instance": RELEASE,
    }
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    rules = {
        tuple(sorted({p["port"] for p in rule["ports"]})): rule["to"] for rule in spec["egress"]
    }
    # The ports of config.kafka_bootstrap_servers (kafka:9092) and config.redis_url
    # (redis://redis:6379/0) are always allowed (test_helm_network.py).
    assert set(rules) == {(53,), (9092, 9094), (6379,), (80, 443)}
    assert rules[(9092, 9094)] == brokers
    for ports in ((6379,), (80, 443)):
        blocks = {peer["ipBlock"]["cidr"]: set(peer["ipBlock"]["except"]) for peer in rules[ports]}
        assert set(blocks) == {"0.0.0.0/0", "::/0"}
        assert {"169.254.0.0/16", "100.100.100.200/32"} <= blocks["0.0.0.0/0"]
        assert {"fd00:ec2::254/128", "fe80::/10"} <= blocks["::/0"]
        assert not METADATA_ADDRESSES - (blocks["0.0.0.0/0"] | blocks["::/0"])


async def test_sizes_lists_and_secret_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = await _render(tmp_path, SIZED)
    assert "ConfigMap" not in release.kinds()
    requests, webhooks = release.deployment("requests"), release.deployment("webhooks")
    assert requests["spec"]["replicas"] == 6
    assert webhooks["spec"]["replicas"] == 3
    assert _container(webhooks)["resources"] == {"requests": {"cpu": "100m"}}
    assert _container(requests)["resources"]["limits"]["memory"] == "512Mi"
    assert _container(requests)["image"] == "registry.example.com/mindvideo-relay:1.2.3"
    assert _pod(requests)["terminationGracePeriodSeconds"] == 135
    assert {b["spec"]["minAvailable"] for b in release.all("PodDisruptionBudget")} == {2}

    env = _env(requests)
    # Large whole numbers must not come out in e-notation ("1.048576e+06"); lists are joined.
    assert env["RELAY_MAX_RECORD_BYTES"]["value"] == "1048576"
    assert env["RELAY_SHUTDOWN_GRACE_S"]["value"] == "120"
    assert env["RELAY_KAFKA_ENABLE_IDEMPOTENCE"]["value"] == "false"
    assert env["RELAY_WEBHOOK_ALLOWED_HOSTS"]["value"] == "hooks.internal,10.20.0.0/16"
    assert env["RELAY_WEBHOOK_RETRY_SCHEDULE"]["value"] == "0,5,300.5"
    assert "RELAY_WEBHOOK_SECRETS" not in env
    assert env["RELAY_HTTP_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "status-page", "key": "token"}
    }
    assert env["OTEL_SERVICE_NAME"]["value"] == "mindvideo-relay"
    # A Redis URL with a password comes from a Secret, in place of config.redis_url.
    assert env["RELAY_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-auth",
        "key": "url",
    }
    assert "value" not in env["RELAY_REDIS_URL"]

    settings = _accepted_by_the_relay(env, monkeypatch)
    assert settings.max_record_bytes == 1048576
    assert settings.kafka_enable_idempotence is False
    assert settings.webhook_allowed_hosts == ["hooks.internal", "10.20.0.0/16"]
    assert settings.webhook_retry_schedule == [0.0, 5.0, 300.5]


async def test_kafka_and_redis_connectivity_with_secrets_by_reference(tmp_path: Path) -> None:
    release = await _render(tmp_path, CONNECTED)
    for role in ("requests", "webhooks"):
        deployment = release.deployment(role)
        env = _env(deployment)
        assert set(env) <= SETTINGS_ENV, set(env) - SETTINGS_ENV
        assert env["RELAY_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
        assert env["RELAY_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
        assert env["RELAY_KAFKA_SASL_USERNAME"]["value"] == "relay"
        assert env["RELAY_KAFKA_SASL_PASSWORD"]["valueFrom"] == {
            "secretKeyRef": {"name": "kafka-user", "key": "password"}
        }
        assert env["RELAY_REDIS_MODE"]["value"] == "sentinel"
        assert env["RELAY_REDIS_SENTINELS"]["value"] == "sentinel-0:26379,sentinel-1:26379"
        assert env["RELAY_REDIS_SENTINEL_MASTER"]["value"] == "mymaster"
        assert env["RELAY_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == (
            "redis-auth"
        )
        # Each file setting names a file the pod has: a key of the Secret mounted at its folder.
        mounts = {m["name"]: m for m in _container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in _pod(deployment)["volumes"]}
        files = {}
        for name, mount in mounts.items():
            if "secret" in volumes[name]:
                assert mount["readOnly"] is True
                for item in volumes[name]["secret"]["items"]:
                    secret = volumes[name]["secret"]["secretName"]
                    files[f"{mount['mountPath']}/{item['path']}"] = (secret, item["key"])
        expected = {
            "RELAY_KAFKA_SSL_CAFILE": ("kafka-tls", "ca.crt"),
            "RELAY_KAFKA_SSL_CERTFILE": ("kafka-tls", "user.crt"),
            "RELAY_KAFKA_SSL_KEYFILE": ("kafka-tls", "user.key"),
            "RELAY_REDIS_SSL_CAFILE": ("redis-ca", "ca.pem"),
        }
        for name, source in expected.items():
            assert files[env[name]["value"]] == source, name
        assert not any("value" in e and "secret" in e["value"].lower() for e in env.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"replicaCount": "two"}, "at '/replicaCount': got string, want integer"),
        ({"config": {"kafka_grup_id": "x"}}, "additional properties 'kafka_grup_id' not allowed"),
        ({"config": {"max_in_flight": "lots"}}, "at '/config/max_in_flight'"),
        ({"config": {"kafka_session_timeout_ms": 1000}}, "at '/config/kafka_session_timeout_ms'"),
        ({"config": {"kafka_security_protocol": "TLS"}}, "at '/config/kafka_security_protocol'"),
        ({"webhooks": {"replicaCount": 0}}, "at '/webhooks/replicaCount'"),
        ({"keda": {"offsetResetPolicy": "latest"}}, "'offsetResetPolicy' not allowed"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"extraEnv": [{"name": "RELAY_MAX_IN_FLIGHT", "value": 10}]}, "/extraEnv/0/value"),
    ],
    ids=[
        "replicas-string",
        "config-typo",
        "config-type",
        "config-bound",
        "config-enum",
        "webhooks-zero",
        "keda-reset-policy",
        "top-level-typo",
        "env-value-number",
    ],
)
async def test_the_schema_refuses_typos_and_wrong_types(
    tmp_path: Path, overrides: Mapping[str, Any], message: str
) -> None:
    with pytest.raises(helm.InstallError, match="schema") as refused:
        await _render(tmp_path, overrides)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"terminationGracePeriodSeconds": 30}, "must exceed the shutdown grace"),
        (
            {
                "terminationGracePeriodSeconds": 60,
                "extraEnv": [{"name": "RELAY_SHUTDOWN_GRACE_S", "value": "90"}],
            },
            r"terminationGracePeriodSeconds \(60\) must exceed the shutdown grace .* \(90\)",
        ),
        (
            {
                "extraEnv": [
                    {
                        "name": "RELAY_SHUTDOWN_GRACE_S",
                        "valueFrom": {"configMapKeyRef": {"name": "x", "key": "grace"}},
                    }
                ]
            },
            "must be a plain value",
        ),
        ({"config": {"http_port": 9000}}, "set by the chart"),
        ({"config": {"role": "all"}}, "set by the chart"),
        ({"extraEnv": [{"name": "RELAY_ROLE", "value": "all"}]}, "set by the chart"),
        ({"secrets": {"mindvideoApiKey": {"existingSecret": ""}}}, "mindvideoApiKey"),
        (
            {"config": {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "PLAIN"}},
            "needs secrets.kafkaSaslPassword",
        ),
        ({"config": {"redis_mode": "sentinel"}}, "needs config.redis_sentinels"),
        ({"kafkaTls": {"existingSecret": "tls"}}, "neither SSL nor SASL_SSL"),
        (
            {"keda": {"enabled": True, "lagThreshold": 6000}},
            r"keda.lagThreshold \(6000\) exceeds config.max_in_flight \(5000\)",
        ),
        (
            {
                "secrets": {"httpToken": {"existingSecret": "s", "key": "k"}},
                "extraEnv": [{"name": "RELAY_HTTP_TOKEN", "value": "t"}],
            },
            "set both by secrets.httpToken and by extraEnv",
        ),
    ],
    ids=[
        "grace-too-short",
        "grace-from-extra-env",
        "grace-from-a-secret",
        "port-in-config",
        "role-in-config",
        "role-in-extra-env",
        "no-api-key-secret",
        "sasl-without-password",
        "sentinel-without-master",
        "tls-without-ssl",
        "lag-threshold-above-bound",
        "secret-twice",
    ],
)
async def test_misconfiguration_fails_the_render(
    tmp_path: Path, overrides: Mapping[str, Any], message: str
) -> None:
    with pytest.raises(helm.InstallError, match=message):
        await _render(tmp_path, overrides)


async def test_grace_period_follows_extra_env(tmp_path: Path) -> None:
    values = {"extraEnv": [{"name": "RELAY_SHUTDOWN_GRACE_S", "value": "90"}]}
    release = await _render(tmp_path, values)
    for role in ("requests", "webhooks"):
        deployment = release.deployment(role)
        assert _pod(deployment)["terminationGracePeriodSeconds"] == 105
        assert _env(deployment)["RELAY_SHUTDOWN_GRACE_S"]["value"] == "90", "extraEnv wins"


@pytest.mark.parametrize("name", sorted(chart_schema.secret_settings()))
async def test_every_secret_setting_is_refused_in_config(tmp_path: Path, name: str) -> None:
    route = chart_schema.SECRET_VALUES[name]
    with pytest.raises(helm.InstallError, match=f"config.{name} is a secret.*secrets.{route}"):
        await _render(tmp_path, {"config": {name: "s3cret"}})


def test_every_secret_setting_has_a_route() -> None:
    assert chart_schema.secret_settings() <= set(chart_schema.SECRET_VALUES)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    routes = set(values["secrets"])
    # redisUrl carries a whole RELAY_REDIS_URL with a password in it, in place of config.redis_url.
    assert routes - set(chart_schema.SECRET_VALUES.values()) == {"redisUrl"}
    assert set(chart_schema.SECRET_VALUES.values()) <= routes


async def test_without_webhooks_there_is_one_deployment(tmp_path: Path) -> None:
    release = await _render(tmp_path, {"webhooks": {"enabled": False}})
    (deployment,) = release.all("Deployment")
    assert _env(deployment)["RELAY_ROLE"]["value"] == "requests"
    assert len(release.all("PodDisruptionBudget")) == 1


async def test_helm_test_asks_readyz(tmp_path: Path) -> None:
    release = await _render(tmp_path)
    (pod,) = release.hooks
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    service = release.one("Service")
    url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/readyz"
    assert container["command"][-1] == url
    assert container["command"][:2] == ["python", "-c"]
    compile(container["command"][2], "test-readyz", "exec")  # the script is valid Python
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    (tmp_path / "off").mkdir()
    assert (await _render(tmp_path / "off", {"tests": {"enabled": False}})).hooks == []


def _documented_paths(schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Value paths whose object the schema closes (additionalProperties false), config excluded."""
    paths = []
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        paths.append(path)
        if sub.get("additionalProperties") is False and key != "config":
            paths.extend(_documented_paths(sub, f"{path}."))
    return paths


def test_the_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing = [p for p in _documented_paths(schema) if f"`{p}`" not in readme]
    assert missing == [], f"helm/mindvideo-relay/README.md does not describe {missing}"
    values = (CHART / "values.yaml").read_text()
    assert "deploy/README.md" not in values, "the settings are described in README.md"
    assert re.search(r"README\.md, section \"Settings\"", values)


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
