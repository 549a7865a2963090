"""The chart for a first-day operator (issue 16): unsigned webhooks only when asked by name,
JSON-valued settings given as YAML, KEDA's trigger authentication for a secured Kafka."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deploy.test_helm import (
    _accepted_by_the_relay,
    _container,
    _env,
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
