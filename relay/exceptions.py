"""One error tree: the class says what the caller must do next.

- ``RetryableError``: transient; try the same thing again after a backoff.
- ``RequestRejected``: final for this request; publish a ``request.rejected`` result.
- ``OperatorError``: the operator's configuration (key, credit) is wrong; stop taking work.
- ``FollowTimeout``: a task did not end within ``RELAY_TASK_TIMEOUT_S`` of its submit; fail it.
- ``BudgetHeld``: a spend budget has no room yet; hold the request (unsubmitted) until it may.
- ``RequestExpired`` and ``BudgetExceeded`` are ``RequestRejected``: reject, nothing is charged.

What each of them leads to at each step of a request is one table: ``relay.pipeline.lifecycle``.
- ``ConnectivityError``: Kafka or Redis refuses how the relay connects; do not start.
- ``RecordTooLarge``: Kafka refuses a record's size for good; dead-letter it, do not retry.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class RetryableError(RelayError):
    """A transient failure: timeouts, connection errors, 5xx, 429.

    ``reason`` is a short label from a closed set (``network``, ``connect``, ``http_5xx``,
    ``http_429``, ``http_4xx``, ``bad_response``, ``stream``) for the retry metric; never a
    message. ``maybe_sent`` is ``False`` only when the request certainly had no effect at
    MindVideo (no connection, or a 429): a submit that may have created a task is never treated
    as unsubmitted (a request past its ``expires_at`` is then followed, not rejected).
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        reason: str = "network",
        maybe_sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason
        self.maybe_sent = maybe_sent


class RecordTooLarge(RelayError):
    """Kafka refused a record as too large even in its smallest form: sending it again cannot
    work, so it is final (never retried as an outage would be)."""


class RequestRejected(RelayError):
    """The request itself is wrong and will never succeed as sent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RequestExpired(RequestRejected):
    """The request's ``expires_at`` passed before it was submitted: it never will be."""

    def __init__(self, message: str) -> None:
        super().__init__("expired", message)


class BudgetExceeded(RequestRejected):
    """A spend budget has no room for the request and ``RELAY_BUDGET_MODE=reject``."""

    def __init__(self, message: str, *, budget: str, window: str) -> None:
        super().__init__("budget_exceeded", message)
        self.budget = budget
        self.window = window


class BudgetHeld(RelayError):
    """A spend budget has no room for the request yet (``RELAY_BUDGET_MODE=hold``), or another
    request is learning its price: wait, unsubmitted and unrejected, until ``until_s`` (unix
    seconds: the window's end, or when to look again) or until room is released."""

    def __init__(
        self, message: str, *, budget: str, window: str, until_s: float, full: bool = True
    ) -> None:
        """``full``: the budget has no room (``False``: waiting for a price to be learned)."""
        super().__init__(message)
        self.budget = budget
        self.window = window
        self.until_s = until_s
        self.full = full


class OperatorError(RelayError):
    """Credentials or credit are unusable (401/402/403), or ``RELAY_MINDVIDEO_BASE_URL`` does not
    point at MindVideo's API (``wrong_base_url``: a 404 or 405 on a route that must exist, a
    redirect, an error page instead of MindVideo's JSON): not the request's fault."""

    def __init__(self, status: int, message: str, *, wrong_base_url: bool = False) -> None:
        super().__init__(f"MindVideo answered {status}: {message}")
        self.status = status
        self.message = message
        self.wrong_base_url = wrong_base_url


class StreamUnavailable(RetryableError):
    """The task's event stream cannot be used right now; poll instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="stream")


class FollowTimeout(RelayError):
    """The task did not reach a terminal status within ``RELAY_TASK_TIMEOUT_S`` of its submit."""


class WebhookRefused(RelayError):
    """The SSRF policy refuses this webhook destination; delivering to it is final, not retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WebhookVerificationError(RelayError):
    """A received webhook's signature or timestamp does not check out: answer 400 and drop it."""


class RecordUndecodable(RelayError):
    """A request record's value cannot be carried through: dead-letter it, never retry it.

    ``reason`` is the documented ``error.reason`` header (README, "What happens to each record").
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class StartupError(RelayError):
    """The process cannot start. The message is one line that names the fix; ``exit_code`` says
    whose problem it is: 2 the configuration, 1 a dependency that cannot be reached."""

    exit_code = 1


class ConfigurationError(StartupError):
    """The settings are wrong: each problem names the ``RELAY_*`` variable to change."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ConnectivityError(StartupError):
    """Kafka or Redis refuses the connection settings (a SASL login, a TLS certificate, the wrong
    protocol): retrying will not help, the operator must fix a setting the message names. Exit
    code 1, like any dependency the relay cannot use."""

    exit_code = 1


class DependencyUnavailable(StartupError):
    """Kafka or Redis cannot be reached (or refuses us) at the address the settings give."""

    exit_code = 1

    def __init__(self, dependency: str, address: str, setting: str, reason: str) -> None:
        super().__init__(f"cannot reach {dependency} at {address} ({reason}); check {setting}")
        self.dependency = dependency
        self.address = address
        self.setting = setting
