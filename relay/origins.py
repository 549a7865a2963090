"""Endpoint origins: what breakers, slots, rate limits and metric labels are keyed by.

An origin is ``scheme://host[:port]`` (lower case, the port only when it is not the scheme's
default). Twenty URLs on one host share one origin, so they share one breaker, one set of
in-flight slots and one rate limit: a tenant cannot multiply its share by varying the path.
Origins come from request records, so they become metric labels only when the operator named
them (``RELAY_WEBHOOK_DEFAULT_URL``, ``RELAY_WEBHOOK_RATE_LIMITS``); every other one is ``other``.
"""

from __future__ import annotations

from collections.abc import Iterable

from yarl import URL

DEFAULT_PORTS = {"http": 80, "https": 443}
INVALID_ORIGIN = "invalid:"
OTHER_LABEL = "other"


def origin_of(url: str) -> str:
    """The origin of an endpoint URL; ``invalid:`` when it has no scheme or host."""
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return INVALID_ORIGIN
    scheme, host = (parsed.scheme or "").lower(), (parsed.host or "").lower()
    if not scheme or not host:
        return INVALID_ORIGIN
    if ":" in host:
        host = f"[{host}]"
    port = parsed.explicit_port
    if port is None or port == DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def parse_origin(value: str) -> str:
    """An operator-written origin, normalised; ``ValueError`` unless it is http(s)://host[:port]
    (a trailing ``/`` is fine; a path, query or credentials are not)."""
    text = value.strip()
    try:
        parsed = URL(text)
    except (ValueError, TypeError):
        raise ValueError(f"{text!r} is not a URL origin") from None
    if parsed.scheme not in DEFAULT_PORTS or not parsed.host:
        raise ValueError(f"{text!r} is not an http(s)://host[:port] origin")
    if parsed.path not in ("", "/") or parsed.query_string or parsed.fragment or parsed.user:
        raise ValueError(f"{text!r} has more than scheme, host and port")
    return origin_of(text)


class OriginLabels:
    """Bounded metric labels: a configured origin is its own label, anything else ``other``."""

    def __init__(self, configured: Iterable[str]) -> None:
        self.configured = tuple(dict.fromkeys(configured))
        self._known = frozenset(self.configured)

    def __call__(self, origin: str) -> str:
        return origin if origin in self._known else OTHER_LABEL

    def is_configured(self, origin: str) -> bool:
        return origin in self._known
