"""How every Kafka client of the relay reaches the cluster: bootstrap servers, TLS and SASL.

DESIGN §8: the request consumer, the producer, the admin client, the webhook intake,
``relay webhooks replay`` and ``relay submit`` all connect the same way, so one function builds
their connection keyword arguments from the settings (:func:`kafka_client_options`) and one
starts them (:func:`start_kafka_client`). When a client cannot start, aiokafka only says that
it could not bootstrap; :func:`diagnose` then connects to each bootstrap server itself and
turns what went wrong (a refused SASL login, an untrusted certificate, a TLS listener spoken to
in plain text) into one sentence that names the ``RELAY_*`` setting to fix. The password never
appears in it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from relay.exceptions import ConnectivityError

if TYPE_CHECKING:
    from relay.settings import RelaySettings

TLS_PROTOCOLS = frozenset({"SSL", "SASL_SSL"})
SASL_PROTOCOLS = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
PROBE_TIMEOUT_MS = 10_000
_PRIVATE_KEY_MARKER = b"PRIVATE KEY-----"
_AIOKAFKA_CONN_LOGGER = "aiokafka.conn"


class StartableClient(Protocol):
    async def start(self) -> None: ...


def kafka_client_options(settings: RelaySettings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: where the cluster is and how to log in."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": protocol,
    }
    if protocol in TLS_PROTOCOLS:
        options["ssl_context"] = _ssl_context(settings)
    if protocol in SASL_PROTOCOLS:
        assert settings.kafka_sasl_password is not None  # security_problems() made sure
        _hide_sasl_tokens()
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


class _SaslTokenFilter(logging.Filter):
    """aiokafka logs every request it sends at DEBUG, SASL tokens included, and a PLAIN token is
    the password: with ``RELAY_LOG_LEVEL=DEBUG`` the token is replaced before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_is_sasl(arg) for arg in record.args):
            record.args = tuple(
                "SaslAuthenticateRequest(<hidden>)" if _is_sasl(arg) else arg for arg in record.args
            )
        return True


def _is_sasl(value: object) -> bool:
    return type(value).__name__.startswith("SaslAuthenticateRequest")


def _hide_sasl_tokens() -> None:
    conn_log = logging.getLogger(_AIOKAFKA_CONN_LOGGER)
    if not any(isinstance(f, _SaslTokenFilter) for f in conn_log.filters):
        conn_log.addFilter(_SaslTokenFilter())


def _ssl_context(settings: RelaySettings) -> ssl.SSLContext:
    """The system's CAs, or only ``RELAY_KAFKA_SSL_CAFILE``'s; the client certificate for mutual
    TLS. Turning the hostname check off still verifies the chain."""
    context: ssl.SSLContext = create_ssl_context(
        cafile=settings.kafka_ssl_cafile,
        certfile=settings.kafka_ssl_certfile,
        keyfile=settings.kafka_ssl_keyfile,
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def security_problems(settings: RelaySettings) -> list[str]:
    """Every Kafka security setting that cannot work as given, each naming its variable."""
    protocol = settings.kafka_security_protocol
    problems: list[str] = []
    sasl = {
        "RELAY_KAFKA_SASL_MECHANISM": settings.kafka_sasl_mechanism,
        "RELAY_KAFKA_SASL_USERNAME": settings.kafka_sasl_username,
        "RELAY_KAFKA_SASL_PASSWORD": settings.kafka_sasl_password,
    }
    tls = {
        "RELAY_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
        "RELAY_KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
        "RELAY_KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile,
    }
    if protocol in SASL_PROTOCOLS:
        problems += [
            f"RELAY_KAFKA_SECURITY_PROTOCOL={protocol} needs {name}"
            for name, value in sasl.items()
            if not value or not _secret(value)
        ]
    else:
        problems += [
            f"{name} is set but RELAY_KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL "
            "(SASL_SSL or SASL_PLAINTEXT does)"
            for name, value in sasl.items()
            if value
        ]
    if protocol not in TLS_PROTOCOLS:
        tls_set = [name for name, value in tls.items() if value]
        if "kafka_ssl_check_hostname" in settings.model_fields_set:
            tls_set.append("RELAY_KAFKA_SSL_CHECK_HOSTNAME")
        problems += [
            f"{name} is set but RELAY_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS "
            "(SSL or SASL_SSL does)"
            for name in tls_set
        ]
        return problems
    for name, path in tls.items():
        if path is not None and (problem := unreadable(path)) is not None:
            problems.append(f"{name}={path}: {problem}")
    cert, key = settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
    if key is not None and cert is None:
        problems.append("RELAY_KAFKA_SSL_KEYFILE is set without RELAY_KAFKA_SSL_CERTFILE")
    if cert is not None and key is None and not _holds_private_key(cert):
        problems.append(
            "RELAY_KAFKA_SSL_CERTFILE is set without RELAY_KAFKA_SSL_KEYFILE "
            "(and the certificate file holds no private key)"
        )
    if not problems:
        problems += _tls_material_problems(settings)
    return problems


def _secret(value: object) -> str:
    getter = getattr(value, "get_secret_value", None)
    return str(getter()) if getter is not None else str(value)


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read by this process, or ``None``."""
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _holds_private_key(path: Path) -> bool:
    try:
        return _PRIVATE_KEY_MARKER in path.read_bytes()
    except OSError:
        return False


def _tls_material_problems(settings: RelaySettings) -> list[str]:
    """Load the files the way the clients will, so a wrong PEM or a key that does not match
    its certificate is a configuration error now, not a handshake failure later."""
    try:
        ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
    except (ssl.SSLError, ValueError) as exc:
        return [f"RELAY_KAFKA_SSL_CAFILE={settings.kafka_ssl_cafile}: not a PEM CA bundle ({exc})"]
    if settings.kafka_ssl_certfile is None:
        return []
    try:
        ssl.create_default_context().load_cert_chain(
            settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
        )
    except (ssl.SSLError, ValueError) as exc:
        return [
            "RELAY_KAFKA_SSL_CERTFILE and RELAY_KAFKA_SSL_KEYFILE: not a PEM certificate and "
            f"its matching unencrypted private key ({exc})"
        ]
    return []


async def start_kafka_client(client: StartableClient, options: Mapping[str, Any]) -> None:
    """Start an aiokafka client; a connection it cannot make becomes a
    :class:`ConnectivityError` that says why (see :func:`diagnose`)."""
    try:
        await client.start()
    except (KafkaError, OSError) as exc:
        raise await diagnose(options, exc) from exc


async def diagnose(options: Mapping[str, Any], failure: BaseException) -> ConnectivityError:
    """Connect to each bootstrap server with the client's settings and explain the failure."""
    where = options["bootstrap_servers"]
    security = {k: v for k, v in options.items() if k != "bootstrap_servers"}
    reasons: list[str] = []
    unreachable = 0
    for host, port, _ in collect_hosts(where, randomize=False):
        try:
            conn = await create_conn(
                host,
                port,
                client_id="mindvideo-relay-probe",
                request_timeout_ms=PROBE_TIMEOUT_MS,
                **security,
            )
        except (KafkaError, OSError) as exc:  # TimeoutError is an OSError
            reason = f"{host}:{port} {explain(exc, options)}"
            if isinstance(exc, SaslAuthenticationFailed | UnsupportedSaslMechanismError):
                return ConnectivityError(f"Kafka at {reason}")
            reasons.append(reason)
            unreachable += _unreachable(exc)
            continue
        try:
            await conn.send(MetadataRequest([]))
        except (KafkaError, OSError) as exc:
            return ConnectivityError(
                f"Kafka at {host}:{port} {_explain_refused_request(exc, options)}"
            )
        finally:
            conn.close()
        return ConnectivityError(
            f"Kafka at {host}:{port} accepts these connection settings, but a client could "
            f"not start ({type(failure).__name__}: {failure}); if the brokers advertise "
            "addresses this process cannot reach, fix their advertised listeners"
        )
    if unreachable == len(reasons):
        # Nothing listens there (or nothing answers): the address is what to check.
        return ConnectivityError(
            f"cannot reach Kafka at {where} (no bootstrap server answered); "
            "check RELAY_KAFKA_BOOTSTRAP_SERVERS"
        )
    return ConnectivityError(
        f"no Kafka bootstrap server of RELAY_KAFKA_BOOTSTRAP_SERVERS={where} could be used "
        f"({type(failure).__name__}): " + "; ".join(reasons)
    )


def _unreachable(exc: BaseException) -> bool:
    """A connection that was never made (refused, no route, no answer), not a TLS or SASL
    failure on one that was."""
    if isinstance(exc, ssl.SSLError | KafkaConnectionError | ConnectionResetError):
        return False
    return isinstance(exc, OSError)


def _explain_refused_request(exc: BaseException, options: Mapping[str, Any]) -> str:
    if options.get("security_protocol") not in SASL_PROTOCOLS:
        return (
            f"closed the connection at the first request after connecting ({exc}): the "
            "listener expects a SASL login (RELAY_KAFKA_SECURITY_PROTOCOL=SASL_SSL or "
            "SASL_PLAINTEXT, with RELAY_KAFKA_SASL_MECHANISM, _USERNAME and _PASSWORD)"
        )
    return f"refused a metadata request after the login ({exc}): does the user have access?"


def explain(exc: BaseException, options: Mapping[str, Any]) -> str:
    """What a failed connection means for the operator, naming the setting to look at."""
    protocol = options.get("security_protocol", "PLAINTEXT")
    mechanism = options.get("sasl_mechanism")
    if isinstance(exc, SaslAuthenticationFailed):
        user = options.get("sasl_plain_username")
        return (
            f"refused the SASL {mechanism} login of RELAY_KAFKA_SASL_USERNAME={user!r}: "
            f"a wrong RELAY_KAFKA_SASL_PASSWORD or an unknown user ({exc})"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return f"does not offer RELAY_KAFKA_SASL_MECHANISM={mechanism}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = "RELAY_KAFKA_SSL_CAFILE must name the CA that signed it"
        if "hostname" in str(exc).lower() or "ip address" in str(exc).lower():
            hint = "its names do not include this host (RELAY_KAFKA_SSL_CHECK_HOSTNAME=false skips "
            hint += "the name check, not the chain)"
        return f"presented a TLS certificate that is not trusted: {exc.verify_message}; {hint}"
    if isinstance(exc, ssl.SSLError):
        return (
            f"failed the TLS handshake ({exc.reason or exc}): is the listener TLS, and does it "
            "require a client certificate (RELAY_KAFKA_SSL_CERTFILE, RELAY_KAFKA_SSL_KEYFILE)?"
        )
    if isinstance(exc, KafkaConnectionError | ConnectionResetError):
        if protocol in TLS_PROTOCOLS:
            return (
                f"closed the connection ({exc}): if the listener requires a client "
                "certificate, set RELAY_KAFKA_SSL_CERTFILE and RELAY_KAFKA_SSL_KEYFILE; if it "
                "expects SASL, RELAY_KAFKA_SECURITY_PROTOCOL=SASL_SSL"
            )
        return (
            f"closed the connection before answering ({exc}): the listener may require TLS "
            f"or SASL, and RELAY_KAFKA_SECURITY_PROTOCOL is {protocol}"
        )
    if isinstance(exc, TimeoutError):
        return f"did not answer within {PROBE_TIMEOUT_MS / 1000:.0f}s"
    if isinstance(exc, OSError):
        return f"is unreachable ({exc.strerror or exc})"
    return str(exc)
