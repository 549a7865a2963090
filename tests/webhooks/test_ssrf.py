"""The SSRF guard refuses private destinations before any connection, including after a DNS
rebinding at connect time; the allow-list opens exactly what it names."""

from __future__ import annotations

import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from relay.exceptions import WebhookRefused
from relay.webhooks.client import WebhookClient
from relay.webhooks.signing import WebhookSigner
from relay.webhooks.ssrf import GuardedResolver, SsrfGuard, SsrfPolicy
from tests.support.webhook_receiver import Receiver

PUBLIC = "93.184.216.34"  # only ever handed to the policy, never connected to


class ScriptedResolver(AbstractResolver):
    """Answers each lookup with the next address of a script (then repeats the last one)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.lookups = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        address = self.addresses[min(self.lookups, len(self.addresses) - 1)]
        self.lookups += 1
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=0)]

    async def close(self) -> None:
        return None


def _client(resolver: AbstractResolver | None, allowed: list[str] | None = None) -> WebhookClient:
    return WebhookClient(
        WebhookSigner([]),
        SsrfPolicy(allowed or []),
        connect_timeout_s=2,
        timeout_s=3,
        max_connections=4,
        resolver=resolver,
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://[::1]/hook",
        "http://[fd00:ec2::254]/",
        "http://[fc00::1]/",
        "http://[fec0::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[2002:7f00:1::]/",
        "http://[64:ff9b::a00:1]/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "file:///etc/passwd",
        "ftp://example.com/x",
        "gopher://example.com/",
        "http:///nohost",
    ],
)
async def test_refused_by_default_before_any_connection(url: str) -> None:
    resolver = ScriptedResolver(PUBLIC)
    guard = SsrfGuard(SsrfPolicy([]), GuardedResolver(resolver, SsrfPolicy([])))
    with pytest.raises(WebhookRefused):
        await guard.check(url)
    assert resolver.lookups == 0, "refused on the URL alone, no DNS lookup needed"


async def test_a_hostname_resolving_to_loopback_is_refused() -> None:
    policy = SsrfPolicy([])
    guard = SsrfGuard(policy, GuardedResolver(DefaultResolver(), policy))
    with pytest.raises(WebhookRefused, match="loopback"):
        await guard.check("http://localhost:8080/hook")


async def test_public_addresses_pass_the_policy() -> None:
    policy = SsrfPolicy([])
    assert policy.refusal("example.com", PUBLIC) is None
    assert policy.refusal("example.com", "2606:2800:220:1:248:1893:25c8:1946") is None
    resolver = ScriptedResolver(PUBLIC)
    await SsrfGuard(policy, GuardedResolver(resolver, policy)).check("https://hooks.example/x")
    assert resolver.lookups == 1


def test_allow_list_opens_exactly_what_it_names() -> None:
    policy = SsrfPolicy(["127.0.0.1", "10.1.0.0/16", "internal.example", "fd12::/64"])
    assert policy.refusal("x", "127.0.0.1") is None
    assert policy.refusal("x", "::ffff:127.0.0.1") is None
    assert policy.refusal("x", "127.0.0.2") is not None
    assert policy.refusal("x", "10.1.255.7") is None
    assert policy.refusal("x", "10.2.0.1") is not None
    assert policy.refusal("x", "10.0.255.255") is not None
    assert policy.refusal("x", "fd12::5") is None
    assert policy.refusal("x", "fd13::5") is not None
    assert policy.refusal("x", "169.254.169.254") is not None
    # A hostname entry opens that name whatever it resolves to, and nothing else.
    assert policy.refusal("internal.example", "10.9.9.9") is None
    assert policy.refusal("INTERNAL.example.", "10.9.9.9") is None
    assert policy.refusal("other.example", "10.9.9.9") is not None
    assert policy.check_static("http://internal.example/x") is None
    with pytest.raises(WebhookRefused):
        SsrfPolicy(["localhost"]).check_static("http://127.0.0.1/")
    with pytest.raises(WebhookRefused, match="scheme"):
        policy.check_static("file:///etc/passwd")


async def test_dns_rebinding_is_refused_at_connect_time() -> None:
    """The name is public when checked and loopback when the connector resolves it again."""
    receiver = Receiver()
    await receiver.start()
    resolver = ScriptedResolver(PUBLIC, "127.0.0.1")
    client = _client(resolver)
    await client.start()
    try:
        result = await client.post(f"http://rebind.test:{receiver.port}/hook", "evt_1", b"{}")
    finally:
        await client.stop()
        await receiver.stop()
    assert result.outcome == "refused"
    assert result.error is not None
    assert "127.0.0.1" in result.error
    assert resolver.lookups == 2, "checked before the attempt and again by the connector"
    assert receiver.deliveries == []


async def test_connect_time_check_alone_refuses() -> None:
    policy = SsrfPolicy([])
    with pytest.raises(WebhookRefused, match="private"):
        await GuardedResolver(ScriptedResolver("10.0.0.7"), policy).resolve("x.test", 80)
    # One bad record among good ones refuses the whole name.
    resolver = ScriptedResolver(PUBLIC)
    resolver.addresses = [PUBLIC]
    guarded = GuardedResolver(resolver, policy)
    assert (await guarded.resolve("ok.test", 80))[0]["host"] == PUBLIC


async def test_allowed_loopback_receives_and_the_default_policy_refuses_it() -> None:
    receiver = Receiver()
    await receiver.start()
    allowed = _client(None, ["127.0.0.1"])
    default = _client(None)
    await allowed.start()
    await default.start()
    try:
        ok = await allowed.post(receiver.url, "evt_ok", b'{"a":1}')
        refused = await default.post(receiver.url, "evt_no", b"{}")
    finally:
        await allowed.stop()
        await default.stop()
        await receiver.stop()
    assert ok.outcome == "success"
    assert refused.outcome == "refused"
    assert [d.headers["webhook-id"] for d in receiver.deliveries] == ["evt_ok"]
    assert receiver.deliveries[0].body == b'{"a":1}'
