"""The chart's NetworkPolicy as a first-day operator meets it: the brokers and the Redis the values
name are reachable whatever their port (MSK on 9096, a TLS Redis on 6380), and `helm test`
passes when ingress is narrowed to the monitoring namespace."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_helm import CHART, Manifest, _render, helm, helm_home

__all__ = ["helm_home"]

MONITORING = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector, evaluated as the API server does."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not held:
            return False
    return True


def _admits_from_namespace(policy: Manifest, labels: Mapping[str, str]) -> bool:
    """Whether some ingress rule lets a pod of the policy's own namespace reach port http."""
    for rule in policy["spec"]["ingress"]:
        if {"port": "http", "protocol": "TCP"} not in rule["ports"]:
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            # A podSelector alone means the policy's namespace; a namespaceSelector needs labels
            # this test does not model, so it counts only when it selects every namespace.
            namespaces = peer.get("namespaceSelector")
            if namespaces not in (None, {}) or "ipBlock" in peer:
                continue
            if _selects(peer.get("podSelector", {}), labels):
                return True
    return False


def _egress_ports(policy: Manifest) -> list[set[int]]:
    return [{p["port"] for p in rule["ports"]} for rule in policy["spec"]["egress"]]


def _readme_examples() -> list[dict[str, Any]]:
    """The values examples of the chart README's Settings section (```yaml, `---` separated)."""
    readme = (CHART / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    docs = [doc for block in blocks for doc in yaml.safe_load_all(block)]
    return [doc for doc in docs if doc and "config" in doc]


@pytest.mark.parametrize(
    "example", _readme_examples(), ids=lambda e: e["config"]["kafka_bootstrap_servers"]
)
async def test_the_readme_examples_reach_their_brokers(
    tmp_path: Path, example: dict[str, Any]
) -> None:
    """The README's MSK (9096) and Strimzi (9093) values, taken literally, with the policy on."""
    values = {**example, "networkPolicy": {"enabled": True, "kafka": {"ports": []}}}
    policy = (await _render(tmp_path, values)).one("NetworkPolicy")
    brokers = example["config"]["kafka_bootstrap_servers"].split(",")
    wanted = {int(address.rsplit(":", 1)[1]) for address in brokers}
    kafka = [ports for ports in _egress_ports(policy) if wanted <= ports]
    assert kafka, f"no egress rule allows {wanted}: {_egress_ports(policy)}"


SECRET_URL = {"secrets": {"redisUrl": {"existingSecret": "redis-auth", "key": "url"}}}
SENTINELS = {
    "redis_mode": "sentinel",
    "redis_sentinels": ["sentinel-0:26380", "sentinel-1:26380"],
    "redis_sentinel_master": "mymaster",
}


@pytest.mark.parametrize(
    ("overrides", "kafka", "redis"),
    [
        (
            {"config": {"kafka_bootstrap_servers": "b-1.msk:9096, b-2.msk:9096,[fd00::5]:9097"}},
            {9096, 9097},
            {6379},
        ),
        ({"config": {"kafka_bootstrap_servers": "kafka-0, kafka-1"}}, {9092}, {6379}),
        ({"config": {"redis_url": "rediss://:p@ss@redis.example:6380/0"}}, {9092}, {6380}),
        ({"config": {"redis_url": "redis://[fd00::7]:6381"}}, {9092}, {6381}),
        ({"config": {"redis_url": "rediss://redis.example"}}, {9092}, {6379}),
        (
            # The Sentinels' ports from config, the master's (named at run time) listed.
            {"config": SENTINELS, "networkPolicy": {"redis": {"ports": [6380]}}},
            {9092},
            {6380, 26380},
        ),
        (
            # extraEnv wins over config, for the relay and for the policy alike.
            {
                "extraEnv": [
                    {"name": "RELAY_KAFKA_BOOTSTRAP_SERVERS", "value": "kafka.internal:19092"},
                    {"name": "RELAY_REDIS_URL", "value": "redis://redis.internal:16379"},
                ]
            },
            {19092},
            {16379},
        ),
        (
            # A URL from a Secret is not visible: the listed ports are what is allowed.
            {**SECRET_URL, "networkPolicy": {"redis": {"ports": [6380]}}},
            {9092},
            {6380},
        ),
        (
            {"networkPolicy": {"kafka": {"ports": [9093]}, "redis": {"ports": [6379, 26379]}}},
            {9092, 9093},
            {6379, 26379},
        ),
    ],
    ids=[
        "msk-brokers",
        "default-port",
        "tls-redis",
        "ipv6-redis",
        "redis-default-port",
        "sentinels",
        "extra-env",
        "url-from-secret",
        "listed-and-derived",
    ],
)
async def test_egress_allows_the_configured_ports(
    tmp_path: Path, overrides: dict[str, Any], kafka: set[int], redis: set[int]
) -> None:
    network = {"enabled": True, **overrides.get("networkPolicy", {})}
    policy = (await _render(tmp_path, {**overrides, "networkPolicy": network})).one("NetworkPolicy")
    rules = policy["spec"]["egress"]
    kafka_rule, redis_rule = rules[1], rules[2]
    assert {p["port"] for p in kafka_rule["ports"]} == kafka
    assert {p["port"] for p in redis_rule["ports"]} == redis
    assert all(p["protocol"] == "TCP" for p in kafka_rule["ports"] + redis_rule["ports"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"config": {"kafka_bootstrap_servers": "kafka:90g2"}}, r'"kafka:90g2" has no valid port'),
        ({"config": {"kafka_bootstrap_servers": "kafka:70000"}}, "not between 1 and 65535"),
        (SECRET_URL, r"RELAY_REDIS_URL comes from a Secret .* networkPolicy\.redis\.ports"),
        (
            {
                "extraEnv": [
                    {
                        "name": "RELAY_REDIS_URL",
                        "valueFrom": {"secretKeyRef": {"name": "redis-auth", "key": "url"}},
                    }
                ]
            },
            "RELAY_REDIS_URL comes from a Secret",
        ),
        ({"config": SENTINELS}, r"sentinel .* list their port\(s\) in networkPolicy\.redis\.ports"),
        (
            {
                "extraEnv": [
                    {
                        "name": "RELAY_KAFKA_BOOTSTRAP_SERVERS",
                        "valueFrom": {"configMapKeyRef": {"name": "kafka", "key": "servers"}},
                    }
                ]
            },
            r"RELAY_KAFKA_BOOTSTRAP_SERVERS comes from extraEnv valueFrom",
        ),
        ({"config": {"kafka_bootstrap_servers": ""}}, "no Kafka port to allow"),
        ({"config": {"redis_url": "redis://:pa#ss@redis:6379/0"}}, r"no host\[:port\] can be read"),
    ],
    ids=[
        "bad-port",
        "port-out-of-range",
        "redis-url-in-secret",
        "redis-url-from-extra-env-secret",
        "sentinel-master-port",
        "brokers-from-configmap",
        "no-brokers",
        "unencoded-password",
    ],
)
async def test_a_port_the_chart_cannot_see_fails_the_render(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    """Rather than a policy that silently blocks the relay's own Redis or brokers (or renders
    `ports: null`, which Kubernetes reads as every port)."""
    network = {"enabled": True, **overrides.get("networkPolicy", {})}
    with pytest.raises(helm.InstallError, match=message) as refused:
        await _render(tmp_path, {**overrides, "networkPolicy": network})
    assert "pa#ss" not in str(refused.value), "a password never reaches the error"


@pytest.mark.parametrize("ingress_from", [MONITORING, []], ids=["monitoring-only", "anyone"])
async def test_helm_test_passes_with_the_policy(
    tmp_path: Path, ingress_from: list[dict[str, Any]]
) -> None:
    values = {"networkPolicy": {"enabled": True, "ingressFrom": ingress_from}}
    release = await _render(tmp_path, values)
    policy = release.one("NetworkPolicy")
    selector = policy["spec"]["podSelector"]
    for role in ("requests", "webhooks"):
        labels = release.deployment(role)["spec"]["template"]["metadata"]["labels"]
        assert _selects(selector, labels), f"the policy must cover the {role} pods"
    (test_pod,) = release.hooks
    test_labels = test_pod["metadata"]["labels"]
    assert not _selects(selector, test_labels), "the test pod's own egress is not the relay's"
    assert _admits_from_namespace(policy, test_labels), "the test pod must reach /readyz"
    unrelated = {"app.kubernetes.io/name": "curl"}
    assert _admits_from_namespace(policy, unrelated) == (not ingress_from)
    if not ingress_from:
        return
    assert policy["spec"]["ingress"][0]["from"] == MONITORING
    (tmp_path / "no-tests").mkdir()
    without = await _render(tmp_path / "no-tests", {**values, "tests": {"enabled": False}})
    assert len(without.one("NetworkPolicy")["spec"]["ingress"]) == 1
