"""SSRF policy for webhook endpoints (DESIGN §6): where the relay may send customer-chosen POSTs.

Refused by default: schemes other than http/https; addresses that are loopback, private,
link-local, multicast, reserved, unspecified, CGNAT (100.64/10), IPv6 unique-local or site-local,
IPv4 embedded in IPv6 (mapped, 6to4, NAT64, Teredo) of any of those, and cloud metadata endpoints.
``RELAY_WEBHOOK_ALLOWED_HOSTS`` opens exactly what it names: a hostname (exact match) or an
address / CIDR range.

Names are checked twice: once before the attempt (a clear refusal, no connection opened) and
again by :class:`GuardedResolver` inside the HTTP connector, whose answer is the very address list
the connector dials. A name that resolves to a public address first and to a private one at
connect time (DNS rebinding) is refused by the second check. IP literals never reach a resolver;
they cannot change and are checked before the attempt.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from relay.exceptions import WebhookRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
METADATA_HOSTNAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task credentials
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
CGNAT = ipaddress.ip_network("100.64.0.0/10")
IPV6_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_refusal(ip: IPAddress) -> str | None:
    """Why the relay must not connect to ``ip`` by default, or ``None`` if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None and ip.teredo is not None:
            embedded = ip.teredo[1]
        if embedded is not None:
            reason = address_refusal(embedded)
            return None if reason is None else f"IPv6-embedded IPv4 {embedded}: {reason}"
    checks: list[tuple[bool, str]] = [
        (ip in METADATA_ADDRESSES, "cloud metadata address"),
        (ip.is_loopback, "loopback address"),
        (ip.is_unspecified, "unspecified address"),
        (ip.is_link_local, "link-local address"),
        (ip.is_multicast, "multicast address"),
        (ip.version == 4 and ip in CGNAT, "carrier-grade NAT address (100.64/10)"),
        (ip.version == 6 and ip in IPV6_SITE_LOCAL, "IPv6 site-local address"),
        (ip.is_private, "private address"),
        (ip.is_reserved, "reserved address"),
        (not ip.is_global, "address that is not globally routable"),
    ]
    return next((reason for refused, reason in checks if refused), None)


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


class SsrfPolicy:
    """The default refusals plus the operator's allow-list of hostnames and networks."""

    def __init__(self, allowed_hosts: list[str]) -> None:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in allowed_hosts:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        self._hosts = frozenset(hosts)
        self._networks = tuple(networks)

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self._hosts

    def refusal(self, host: str, address: str) -> str | None:
        """Why ``host`` at ``address`` is refused, or ``None`` if the relay may connect."""
        if self.host_allowed(host):
            return None
        ip = _parse_ip(address.split("%", 1)[0])
        if ip is None:
            return f"unparseable address {address!r}"
        plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
        if any(plain.version == net.version and plain in net for net in self._networks):
            return None
        return address_refusal(ip)

    def check_static(self, url: str) -> str | None:
        """The checks that need no DNS: scheme, host, metadata names, IP literals.

        Returns the host to resolve, or ``None`` when nothing is left to check.
        Raises :class:`WebhookRefused` when the URL is refused outright.
        """
        try:
            parsed = URL(url)
        except ValueError:
            raise WebhookRefused("the URL cannot be parsed") from None
        if parsed.scheme not in ALLOWED_SCHEMES:
            raise WebhookRefused(f"scheme {parsed.scheme!r} is not allowed (http and https only)")
        host = parsed.raw_host
        if not host:
            raise WebhookRefused("the URL has no host")
        if self.host_allowed(host):
            return None
        if host.lower().rstrip(".") in METADATA_HOSTNAMES:
            raise WebhookRefused(f"{host} is a cloud metadata endpoint")
        if _parse_ip(host) is not None:
            reason = self.refusal(host, host)
            if reason is not None:
                raise WebhookRefused(f"{host} is a {reason}")
            return None
        return host


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` and refuses the host if any of its addresses is refused.

    Installed in the webhook connector (with its DNS cache off), it is the check on the addresses
    actually connected to. Refusing the whole host, rather than dropping bad addresses, keeps a
    name with one public and one private record from ever reaching the private one.
    """

    def __init__(self, inner: AbstractResolver, policy: SsrfPolicy) -> None:
        self._inner = inner
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            reason = self._policy.refusal(host, result["host"])
            if reason is not None:
                raise WebhookRefused(f"{host} resolves to {result['host']}, a {reason}")
        return results

    async def close(self) -> None:
        await self._inner.close()


class SsrfGuard:
    """The pre-attempt check of an endpoint URL, resolving names with the guarded resolver."""

    def __init__(self, policy: SsrfPolicy, resolver: GuardedResolver) -> None:
        self._policy = policy
        self._resolver = resolver

    async def check(self, url: str) -> None:
        """Raise :class:`WebhookRefused` if the policy forbids ``url``; DNS failures propagate
        as ``OSError`` (a transient problem, retried like a connection error)."""
        host = self._policy.check_static(url)
        if host is not None:
            await self._resolver.resolve(host, 0, socket.AF_UNSPEC)
