"""Reading the settings strictly, with every problem said in one line that names its variable.

An operator writes ``RELAY_*`` variables, so that is the only vocabulary an error may use: never
an internal field path like ``webhook_retry_schedule.0``. Every problem found is reported at once
(one run, one line, every fix), and a secret's value is never echoed.

Strict: a ``RELAY_*`` variable that is not a setting is an error that names the closest known
one (``RELAY_KAFKA_BOOSTRAP_SERVERS`` → "did you mean RELAY_KAFKA_BOOTSTRAP_SERVERS?"), because
a silently ignored typo runs the relay against the wrong broker. The known set is derived from
``RelaySettings``' fields, so a new field is known the moment it exists. Exempt are the prefixes
other programs own: ``RELAY_SIM_*`` (the simulator, ``relay sim``) and ``RELAY_TEST_*`` (the test
suite's service overrides).

The commands that trace (``relay run``, ``relay dev``) also check the standard ``OTEL_*``
variables the relay reads (``relay.tracing.config``), and report their problems in the same line.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import SecretStr, ValidationError

from relay.exceptions import ConfigurationError
from relay.logs import redact_url
from relay.settings import RelaySettings
from relay.tracing.config import TracingConfig, read_tracing_config

ENV_PREFIX = "RELAY_"
EXEMPT_PREFIXES = ("RELAY_SIM_", "RELAY_TEST_")
# How alike a misspelling must be to its setting for a suggestion (difflib ratio).
SUGGESTION_CUTOFF = 0.75
SHOWN_VALUE_MAX_CHARS = 80


def variable_of(field: str) -> str:
    """The environment variable of a settings field: ``log_level`` → ``RELAY_LOG_LEVEL``."""
    return f"{ENV_PREFIX}{field.upper()}"


def known_variables() -> dict[str, str]:
    """Every ``RELAY_*`` variable the relay reads, mapped to its field name."""
    return {variable_of(name): name for name in RelaySettings.model_fields}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One problem per ``RELAY_*`` variable in ``environ`` that is not a setting."""
    known = known_variables()
    problems = []
    for name in sorted(environ):
        upper = name.upper()  # pydantic-settings reads names case-insensitively
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        if upper.startswith(EXEMPT_PREFIXES):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=SUGGESTION_CUTOFF)
        hint = (
            f"did you mean {close[0]}?"
            if close
            else "see the settings table in README.md (RELAY_SIM_* and RELAY_TEST_* are exempt)"
        )
        problems.append(f"{name} is not a relay setting; {hint}")
    return problems


def describe_validation_error(exc: ValidationError, environ: Mapping[str, str]) -> list[str]:
    """One line per problem of a failed ``RelaySettings()``, in terms of variables."""
    return [_describe(error, environ) for error in exc.errors(include_url=False)]


def load_settings(environ: Mapping[str, str] | None = None) -> RelaySettings:
    """The settings from the environment, or ``ConfigurationError`` listing every problem.

    ``environ`` is only for the strictness check; the values themselves are always read from
    ``os.environ`` by pydantic-settings (pass the same mapping or none).
    """
    env = os.environ if environ is None else environ
    problems = unknown_variables(env)
    settings: RelaySettings | None = None
    try:
        settings = RelaySettings()
    except ValidationError as exc:
        problems.extend(describe_validation_error(exc, env))
    if problems or settings is None:
        raise ConfigurationError(problems)
    return settings


def load_service_settings(environ: Mapping[str, str] | None = None) -> RelaySettings:
    """``load_settings()`` plus what ``relay run`` needs to do its job (a MindVideo key, a
    signing secret or the explicit choice to deliver unsigned), and ``OTEL_*`` variables it
    can honour: every problem of all three in one error."""
    env = os.environ if environ is None else environ
    _, tracing_problems = read_tracing_config(env)
    try:
        settings = load_settings(env)
    except ConfigurationError as exc:
        raise ConfigurationError([*exc.problems, *tracing_problems]) from None
    problems = [*settings.service_problems(), *tracing_problems]
    if problems:
        raise ConfigurationError(problems)
    return settings


def load_tracing_config(environ: Mapping[str, str] | None = None) -> TracingConfig:
    """Tracing from the ``OTEL_*`` variables, or ``ConfigurationError`` naming each one the
    relay cannot honour."""
    config, problems = read_tracing_config(os.environ if environ is None else environ)
    if problems:
        raise ConfigurationError(problems)
    return config


def _describe(error: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    loc: tuple[Any, ...] = tuple(error["loc"])
    if not loc:  # a check across settings: its message names the variables itself
        return message
    field = str(loc[0])
    variable = variable_of(field)
    entry = f"entry {loc[1] + 1}: " if len(loc) > 1 and isinstance(loc[1], int) else ""
    raw = _raw_value(variable, environ)
    shown = "" if raw is None or _is_secret(field) else f"={_quote(raw)}"
    return f"{variable}{shown}: {entry}{message}"


def _raw_value(variable: str, environ: Mapping[str, str]) -> str | None:
    for name, value in environ.items():
        if name.upper() == variable:
            return value
    return None


def _quote(raw: str) -> str:
    text = redact_url(raw)
    if len(text) > SHOWN_VALUE_MAX_CHARS:
        text = text[: SHOWN_VALUE_MAX_CHARS - 1] + "…"
    return repr(text)


def _is_secret(field: str) -> bool:
    info = RelaySettings.model_fields.get(field)
    return info is not None and _mentions_secret((info.annotation,))


def _mentions_secret(types: Iterable[object]) -> bool:
    for kind in types:
        if kind is SecretStr:
            return True
        if _mentions_secret(getattr(kind, "__args__", ())):
            return True
    return False
