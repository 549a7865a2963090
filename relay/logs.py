"""Structured logs: one JSON object per line, or a readable line on a terminal.

Fields passed with ``extra=`` (idempotency_key, task_id, partition, …) become keys of the object.
Secrets never reach a log call: settings are logged through ``RelaySettings.redacted()``. As a
second line of defence every formatted line has the userinfo of any URL in it masked
(``redis://:password@host`` → ``redis://***@host``), so a client library's error message that
quotes a URL cannot leak a password either.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

# scheme://user:password@ — everything between "//" and the last "@" before a "/", whitespace or
# quote (greedy, so a stray unencoded "@" in a password does not leave its tail behind).
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^\s/\"']+@")


def scrub(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``."""
    if "@" not in text:
        return text  # no userinfo without an "@" (the regex would cost ~10 µs a log line)
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


def redact_url(url: str) -> str:
    """A URL fit for a log: its userinfo (a Redis password, basic-auth credentials) masked."""
    return scrub(url)


def url_origin(url: str) -> str:
    """Only the scheme and host (and port) of a URL: for URLs that may carry a credential in
    their path or query (a webhook endpoint with a token), where masking the userinfo is not
    enough."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}" if parts.scheme else "(not a URL)"


_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, created: float) -> str:
        """``created`` as ``2026-11-30T16:06:00.123+00:00`` (what ``datetime.isoformat`` gives
        with milliseconds), the date and time formatted once a second: two lines a request."""
        second = int(created)
        micros = round((created - second) * 1_000_000)  # rounded as ``datetime`` rounds it
        if micros >= 1_000_000:
            return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{micros // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str, ensure_ascii=False))


class ReadableFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        extras = " ".join(f"{k}={_escape(str(v))}" for k, v in _extras(record).items())
        message = _escape(record.getMessage())
        line = f"{when} {record.levelname:<7} {record.name}: {message}"
        if extras:
            line = f"{line}  {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return scrub(line)


# A client library's repeated complaint (aiokafka logs every refused reconnection, several a
# second while a broker is out) is written once per this interval, with the count in between.
REPEAT_INTERVAL_S = 30.0
RATE_LIMITED_LOGGERS = ("aiokafka",)


class RepeatFilter(logging.Filter):
    """Lets a client library's line through once per ``interval_s`` for each message template;
    the next one let through carries ``repeated``: how many were held back since."""

    def __init__(
        self,
        interval_s: float = REPEAT_INTERVAL_S,
        prefixes: tuple[str, ...] = RATE_LIMITED_LOGGERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._prefixes = prefixes
        self._clock = clock
        # (logger, template) -> (when last let through, how many held back since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes) or record.levelno <= logging.DEBUG:
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._interval_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.repeated = last[1]
            record.repeated_within_s = self._interval_s
        if len(self._seen) > 1000:  # templates are few; this bounds a library gone wild
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def _escape(text: str) -> str:
    """A text-mode line stays one line: newlines and control characters from producer-supplied
    strings (keys, error messages) are escaped, so no record can forge a log line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def setup_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """``fmt``: ``json``, ``text`` or ``auto`` (text on a terminal, JSON otherwise).

    ``level`` and ``fmt`` are validated with the other settings before this is called
    (``RelaySettings.log_level``/``log_format``), so a typo is a one-line configuration error,
    not a traceback from ``logging``.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else ReadableFormatter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries speak at WARNING unless the operator asked for DEBUG.
    for noisy in ("aiokafka", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(
            root.level if root.level <= logging.DEBUG else max(logging.WARNING, root.level)
        )
