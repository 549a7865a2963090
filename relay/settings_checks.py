"""Settings that parse but cannot work, refused at start (exit code 2) with the fix named.

Each value is valid on its own, so pydantic accepts it; the relay would then fail later, one
request at a time, or never say why: a MindVideo base URL without a scheme (every call fails) or
with ``/api/v1`` already in it (every call 404s: the relay adds ``/api/v1``), an invalid webhook
default URL (every delivery fails), an allow-list entry that looks like a network but is not one
(it silently becomes a hostname that matches nothing), a per-partition in-flight bound above the
process bound, a heartbeat no shorter than the session (the member is expelled between
heartbeats), an empty or malformed topic name or key prefix, a request topic that is also the
results or dead-letter topic (the relay would consume its own output), or a ``RELAY_HTTP_TOKEN``
that is set but blank (the status page and delivery lookups would silently be open) or has
whitespace around it (no bearer header can carry it: they would be closed to everyone).
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from relay.settings import RelaySettings

# What MindVideo's documentation gives as the base (the relay appends API_ROOT to it).
MINDVIDEO_DOC_BASE = "https://api.mindvideo.ai"
API_ROOT = "/api/v1"
# Kafka's rule for topic names (and a sane one for group ids).
_KAFKA_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_HOSTNAME = re.compile(r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$")
_NUMERIC = re.compile(r"^[0-9.]+$")


def workable_problems(s: RelaySettings) -> list[str]:
    """One line per setting that cannot work, each naming its variable and the fix."""
    return [
        *_mindvideo_url(s.mindvideo_base_url),
        *_webhook_urls(s.webhook_default_urls),
        *_allowed_hosts(s.webhook_allowed_hosts),
        *_kafka_names(s),
        *_bounds(s),
        *_http_token(s),
    ]


def _http_token(s: RelaySettings) -> list[str]:
    """Unset means no token (open by choice); set, it must be a token a client can send."""
    if s.http_token is None:
        return []
    token = s.http_token.get_secret_value()
    make = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if not token.strip():
        return [
            "RELAY_HTTP_TOKEN is set but blank, which would leave the status page and "
            f"/webhooks/deliveries open: set a token (make one: {make}) or unset the variable "
            "to serve them without one"
        ]
    if token != token.strip():
        return [
            "RELAY_HTTP_TOKEN starts or ends with whitespace (a newline from the file its Secret "
            "was made from?): no Authorization header can carry it; remove the whitespace"
        ]
    return []


def _mindvideo_url(url: str) -> list[str]:
    parts = urlsplit(url)
    fix = f"give the origin only, e.g. {MINDVIDEO_DOC_BASE} (the relay adds {API_ROOT})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"RELAY_MINDVIDEO_BASE_URL={url!r} is not an http(s) URL: {fix}"]
    path = parts.path.rstrip("/")
    if path.endswith((API_ROOT, f"{API_ROOT}/tasks")) or parts.query or parts.fragment:
        return [f"RELAY_MINDVIDEO_BASE_URL={url!r} would make every call 404: {fix}"]
    return []


def _webhook_urls(urls: list[str]) -> list[str]:
    problems = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(
                f"RELAY_WEBHOOK_DEFAULT_URL: {url[:80]!r} is not an http(s) URL with a host; "
                "give full URLs, comma-separated (https://hooks.example.com/relay)"
            )
    return problems


def _allowed_hosts(entries: list[str]) -> list[str]:
    problems = []
    for entry in entries:
        if "/" in entry or ":" in entry or _NUMERIC.match(entry):
            try:
                ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                problems.append(
                    f"RELAY_WEBHOOK_ALLOWED_HOSTS: {entry!r} is not a valid address or CIDR range "
                    "(e.g. 10.20.0.0/16, fd00::/8)"
                )
        elif not _HOSTNAME.match(entry):
            problems.append(
                f"RELAY_WEBHOOK_ALLOWED_HOSTS: {entry!r} is neither a hostname nor an address "
                "or CIDR range; give host names (hooks.internal) or networks, comma-separated"
            )
    return problems


def _kafka_names(s: RelaySettings) -> list[str]:
    problems = []
    names = {
        "RELAY_REQUEST_TOPIC": s.request_topic,
        "RELAY_RESULT_TOPIC": s.result_topic,
        "RELAY_DEAD_LETTER_TOPIC": s.dead_letter_topic,
        "RELAY_WEBHOOK_DEAD_LETTER_TOPIC": s.webhook_dead_letter_topic,
        "RELAY_KAFKA_GROUP_ID": s.kafka_group_id,
    }
    if s.webhook_events_topic is not None:
        names["RELAY_WEBHOOK_EVENTS_TOPIC"] = s.webhook_events_topic
    for variable, name in names.items():
        if not _KAFKA_NAME.match(name):
            problems.append(
                f"{variable}={name!r} is not a valid Kafka name: use 1-249 of "
                "letters, digits, '.', '_' and '-'"
            )
    if s.request_topic in (s.result_topic, s.dead_letter_topic):
        problems.append(
            "RELAY_REQUEST_TOPIC is also the results or dead-letter topic: the relay would "
            "consume its own output; give RELAY_RESULT_TOPIC and RELAY_DEAD_LETTER_TOPIC "
            "names of their own"
        )
    if not s.redis_key_prefix.strip() or any(c in s.redis_key_prefix for c in "{}\n\r "):
        problems.append(
            f"RELAY_REDIS_KEY_PREFIX={s.redis_key_prefix!r} must be a non-empty name without "
            "spaces or braces (releases sharing one Redis tell their keys apart by it)"
        )
    return problems


def _bounds(s: RelaySettings) -> list[str]:
    problems = []
    if (
        "max_in_flight_per_partition" in s.model_fields_set
        and s.max_in_flight_per_partition > s.max_in_flight
    ):
        problems.append(
            f"RELAY_MAX_IN_FLIGHT_PER_PARTITION={s.max_in_flight_per_partition} is above "
            f"RELAY_MAX_IN_FLIGHT={s.max_in_flight}: lower it, or raise RELAY_MAX_IN_FLIGHT"
        )
    if s.kafka_heartbeat_interval_ms >= s.kafka_session_timeout_ms:
        problems.append(
            f"RELAY_KAFKA_HEARTBEAT_INTERVAL_MS={s.kafka_heartbeat_interval_ms} must be below "
            f"RELAY_KAFKA_SESSION_TIMEOUT_MS={s.kafka_session_timeout_ms} (a third of it is "
            "usual), or the group expels the relay between heartbeats"
        )
    if s.mindvideo_backoff_base_s > s.mindvideo_backoff_max_s:
        problems.append(
            "RELAY_MINDVIDEO_BACKOFF_BASE_S is above RELAY_MINDVIDEO_BACKOFF_MAX_S: lower the "
            "base or raise the maximum"
        )
    return problems
