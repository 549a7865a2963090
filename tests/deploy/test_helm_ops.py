"""The chart for a first-day operator (issue 16, and the outside attack after it): unsigned
webhooks only when asked by name, JSON-valued settings given as YAML, KEDA's trigger
authentication for a secured Kafka, no MindVideo key where it is not used, Strimzi's CA."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_helm import (
    CHART,
    _accepted_by_the_relay,
    _container,
    _env,
    _pod,
    _render,
    helm,
    helm_home,
)

__all__ = ["helm_home"]

UNSIGNED = {"secrets": {"webhookSecrets": {"existingSecret": ""}}}


async def test_no_signing_secret_needs_the_explicit_choice(tmp_path: Path) -> None:
    with pytest.raises(helm.InstallError, match=r"config\.webhook_allow_unsigned: true"):
        await _render(tmp_path, UNSIGNED)
    release = await _render(tmp_path, {**UNSIGNED, "config": {"webhook_allow_unsigned": True}})
    env = _env(release.deployment("webhooks"))
    assert env["RELAY_WEBHOOK_ALLOW_UNSIGNED"]["value"] == "true"
    assert "RELAY_WEBHOOK_SECRETS" not in env


async def test_json_settings_given_as_yaml_reach_the_relay_as_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    budgets = [{"name": "daily", "scope": "global", "window": "day", "limit_usd": 50}]
    hints = {"apimart-doubao-seedance-4-0": {"2K": 0.0252, "*": 0.03}}
    limits = {"https://hooks.example.com": 20, "default": 50}
    release = await _render(
        tmp_path,
        {"config": {"budgets": budgets, "price_hints": hints, "webhook_rate_limits": limits}},
    )
    env = _env(release.deployment("requests"))
    assert json.loads(env["RELAY_BUDGETS"]["value"]) == budgets
    assert json.loads(env["RELAY_PRICE_HINTS"]["value"]) == hints
    settings = _accepted_by_the_relay(env, monkeypatch)
    assert [rule.name for rule in settings.budgets] == ["daily"]
    assert settings.webhook_rate_limits["default"] == 50


SECURED = {
    "config": {
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "relay",
    },
    "secrets": {"kafkaSaslPassword": {"existingSecret": "kafka-user", "key": "password"}},
    "keda": {"enabled": True},
}


async def test_keda_on_a_secured_kafka_needs_its_trigger_authentication(tmp_path: Path) -> None:
    with pytest.raises(helm.InstallError, match=r"needs keda\.authenticationRef"):
        await _render(tmp_path, SECURED)
    secured = {**SECURED, "keda": {"enabled": True, "authenticationRef": "kafka-keda"}}
    release = await _render(tmp_path, secured)
    (trigger,) = release.one("ScaledObject")["spec"]["triggers"]
    assert trigger["authenticationRef"] == {"name": "kafka-keda"}
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    assert trigger["metadata"]["tls"] == "enable"
    assert _container(release.deployment("requests"))["env"], "rendered"


# --- attack B, a first-day operator: settings the pods would crash on, files from two Secrets ---

SIGNING_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OPTIONAL = {"secrets": {"webhookSecrets": {"existingSecret": "mindvideo-relay", "optional": True}}}


def _pod_settings(env: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The relay's settings in a pod whose Secrets exist (a valid signing secret) or not."""
    settings = _accepted_by_the_relay(env, monkeypatch)
    if "RELAY_WEBHOOK_SECRETS" in env:
        monkeypatch.setenv("RELAY_WEBHOOK_SECRETS", SIGNING_SECRET)
        settings = type(settings)()
    return settings


async def test_an_optional_signing_secret_needs_unsigned_delivery_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """optional: the key may be missing, and the relay then refuses to start unless it may
    deliver unsigned: the render fails instead of a crash-looping webhooks Deployment."""
    with pytest.raises(
        helm.InstallError, match=r"optional: true .* config\.webhook_allow_unsigned"
    ):
        await _render(tmp_path, OPTIONAL)
    release = await _render(tmp_path, {**OPTIONAL, "config": {"webhook_allow_unsigned": True}})
    env = _env(release.deployment("webhooks"))
    assert env["RELAY_WEBHOOK_SECRETS"]["valueFrom"]["secretKeyRef"]["optional"] is True
    # The key is missing: Kubernetes leaves the variable out, and the relay still starts.
    missing = {k: v for k, v in env.items() if k != "RELAY_WEBHOOK_SECRETS"}
    assert _accepted_by_the_relay(missing, monkeypatch).service_problems() == []
    del missing["RELAY_WEBHOOK_ALLOW_UNSIGNED"]
    (problem,) = _accepted_by_the_relay(missing, monkeypatch).service_problems()
    assert "RELAY_WEBHOOK_SECRETS is empty" in problem, "what the render now prevents"


async def test_the_webhook_dispatcher_gets_no_mindvideo_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = await _render(tmp_path)
    requests, webhooks = _env(release.deployment("requests")), _env(release.deployment("webhooks"))
    assert requests["RELAY_MINDVIDEO_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "mindvideo-relay",
        "key": "mindvideo-api-key",
    }
    assert "RELAY_MINDVIDEO_API_KEY" not in webhooks
    # The relay starts the webhooks role without a key (and would not start requests without).
    assert _pod_settings(webhooks, monkeypatch).service_problems() == []
    no_key = {k: v for k, v in requests.items() if k != "RELAY_MINDVIDEO_API_KEY"}
    (problem,) = _pod_settings(no_key, monkeypatch).service_problems()
    assert "RELAY_MINDVIDEO_API_KEY is empty" in problem


def _mounted_files(deployment: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each file path the container sees under a Secret mount -> (Secret, key)."""
    volumes = {v["name"]: v for v in _pod(deployment)["volumes"]}
    files = {}
    for mount in _container(deployment)["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "secret" in volume:
            sources = [{"secret": {"name": volume["secret"]["secretName"], **volume["secret"]}}]
        else:
            sources = volume.get("projected", {}).get("sources", [])
        for source in sources:
            for item in source["secret"]["items"]:
                path = f"{mount['mountPath']}/{item['path']}"
                assert path not in files, f"two files at {path}"
                files[path] = (source["secret"]["name"], item["key"])
    return files


STRIMZI = {
    "config": {
        "kafka_bootstrap_servers": "my-cluster-kafka-bootstrap.kafka:9093",
        "kafka_security_protocol": "SSL",
    },
    "kafkaTls": {
        "existingSecret": "relay",
        "certKey": "user.crt",
        "keyKey": "user.key",
        "caSecret": "my-cluster-cluster-ca-cert",
        "caKey": "ca.crt",
    },
}


async def test_strimzi_brokers_ca_comes_from_the_cluster_ca_secret(tmp_path: Path) -> None:
    """The KafkaUser Secret's ca.crt is the clients CA; the brokers' is the cluster CA's."""
    release = await _render(tmp_path, STRIMZI)
    for role in ("requests", "webhooks"):
        deployment = release.deployment(role)
        env, files = _env(deployment), _mounted_files(deployment)
        assert files[env["RELAY_KAFKA_SSL_CAFILE"]["value"]] == (
            "my-cluster-cluster-ca-cert",
            "ca.crt",
        )
        assert files[env["RELAY_KAFKA_SSL_CERTFILE"]["value"]] == ("relay", "user.crt")
        assert files[env["RELAY_KAFKA_SSL_KEYFILE"]["value"]] == ("relay", "user.key")
        assert ("relay", "ca.crt") not in files.values(), "the clients CA is not mounted"
    readme = (CHART / "README.md").read_text()
    assert "caSecret: my-cluster-cluster-ca-cert" in readme, "the README's Strimzi example"


@pytest.mark.parametrize(
    ("kafka_tls", "message"),
    [
        ({"caSecret": "ca", "certKey": "c", "keyKey": "k"}, "read from kafkaTls.existingSecret"),
        ({"caSecret": "ca", "existingSecret": "user"}, "set kafkaTls.certKey and keyKey"),
        (
            {"caSecret": "ca", "existingSecret": "u", "certKey": "ca.crt", "keyKey": "k"},
            "is also certKey or keyKey",
        ),
    ],
    ids=["cert-without-its-secret", "unused-secret", "same-file-name"],
)
async def test_kafka_tls_from_two_secrets_that_cannot_work_fails_the_render(
    tmp_path: Path, kafka_tls: dict[str, str], message: str
) -> None:
    with pytest.raises(helm.InstallError, match=message):
        await _render(tmp_path, {**STRIMZI, "kafkaTls": kafka_tls})
    plain = {"kafkaTls": {"caSecret": "ca"}}
    with pytest.raises(helm.InstallError, match="neither SSL nor SASL_SSL"):
        await _render(tmp_path, plain)


async def test_the_readme_trigger_authentication_does_not_repeat_the_trigger(
    tmp_path: Path,
) -> None:
    """KEDA refuses `sasl` or `tls` set both in the trigger and in its TriggerAuthentication."""
    readme = (CHART / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    (auth,) = [
        doc
        for block in blocks
        for doc in yaml.safe_load_all(block)
        if doc and doc.get("kind") == "TriggerAuthentication"
    ]
    parameters = {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
    assert parameters == {"username", "password"}
    assert "{parameter: ca, name: my-cluster-cluster-ca-cert, key: ca.crt}" in readme
    secured = {**SECURED, "keda": {"enabled": True, "authenticationRef": auth["metadata"]["name"]}}
    (trigger,) = (await _render(tmp_path, secured)).one("ScaledObject")["spec"]["triggers"]
    assert {"sasl", "tls"} <= set(trigger["metadata"])
    assert not parameters & set(trigger["metadata"])
    (row,) = [line for line in readme.splitlines() if line.startswith("| `keda.authenticationRef`")]
    assert "no `sasl`, no `tls`" in row
