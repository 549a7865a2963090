"""One error tree: the class says what the caller must do next.

- ``RetryableError``: transient; try the same thing again after a backoff.
- ``RequestRejected``: final for this request; publish a ``request.rejected`` result.
- ``OperatorError``: the operator's configuration (key, credit) is wrong; stop taking work.
- ``ConnectivityError``: Kafka or Redis refuses how the relay connects; do not start.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class RetryableError(RelayError):
    """A transient failure: timeouts, connection errors, 5xx, 429."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestRejected(RelayError):
    """The request itself is wrong and will never succeed as sent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class OperatorError(RelayError):
    """Credentials or credit are unusable (401/402/403): not the request's fault."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"MindVideo answered {status}: {message}")
        self.status = status
        self.message = message


class ConnectivityError(RelayError):
    """Kafka or Redis refuses the connection settings (a SASL login, a TLS certificate, the wrong
    protocol): retrying will not help, the operator must fix a setting the message names."""


class StreamUnavailable(RetryableError):
    """The task's event stream cannot be used right now; poll instead."""


class WebhookRefused(RelayError):
    """The SSRF policy refuses this webhook destination; delivering to it is final, not retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WebhookVerificationError(RelayError):
    """A received webhook's signature or timestamp does not check out: answer 400 and drop it."""
