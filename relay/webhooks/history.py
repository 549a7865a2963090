"""Compact attempt history: what ``relay webhooks status --key`` shows, kept small in Redis.

A pending delivery keeps its attempts in its hash (field ``hist``). When it finishes, the
history moves into its *tombstone*: one line in a field named by the idempotency key in a
time-bucketed hash that expires after ``RELAY_WEBHOOK_DONE_RETENTION_S``. That line is both
the "already finished" marker (a result read again schedules nothing) and the lookup record::

    \\n<delivery id, 8 hex> <finish code> <type code> <origin> <attempt>,<attempt>…
    attempt = <start unix ms, base 36>/<status or empty>/<outcome code>/<latency ms>

A delivery that got 200 at its first attempt leaves a ``CompactDone`` marker in its key's
idempotency record instead (the common case costs ~30 bytes in a record that exists anyway).
A one-attempt delivery's line is about 30 bytes plus its origin. Errors are kept as outcome codes
(the last error text stays in the dead letter); at most ``MAX_HISTORY`` most recent attempts are
kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from relay.models import RESULT_TYPE_CODES

MAX_HISTORY = 12
ID_PREFIX_CHARS = 8  # unique among the few deliveries of one idempotency key

OUTCOME_CODES = {
    "success": "s",
    "http_4xx": "4",
    "http_5xx": "5",
    "timeout": "t",
    "connection_error": "c",
    "refused": "r",
    "gone": "g",
    "error": "e",
}
FINISH_CODES = {"delivered": "d", "dead_lettered": "x", "gone": "g"}
_OUTCOMES = {v: k for k, v in OUTCOME_CODES.items()}
_FINISHES = {v: k for k, v in FINISH_CODES.items()}
_TYPES = {v: k for k, v in RESULT_TYPE_CODES.items()}


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt: when it started, what came back, how long it took."""

    at_ms: int
    outcome: str
    status: int | None
    latency_ms: int

    def encode(self) -> str:
        status = "" if self.status is None else str(self.status)
        code = OUTCOME_CODES.get(self.outcome, "?")
        return f"{_base36(self.at_ms)}/{status}/{code}/{self.latency_ms}"

    @classmethod
    def decode(cls, text: str) -> AttemptRecord:
        at, status, code, latency = text.split("/")
        outcome = _OUTCOMES.get(code, "unknown")
        return cls(int(at, 36), outcome, int(status) if status else None, int(latency))


def _base36(n: int) -> str:
    """Unix milliseconds in 8 characters instead of 13."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


def append_attempt(history: str, record: AttemptRecord) -> str:
    """``history`` with ``record`` added, capped to the most recent ``MAX_HISTORY``."""
    entries = [e for e in history.split(",") if e]
    entries.append(record.encode())
    return ",".join(entries[-MAX_HISTORY:])


def decode_history(history: str) -> list[AttemptRecord]:
    out = []
    for entry in history.split(","):
        if entry:
            try:
                out.append(AttemptRecord.decode(entry))
            except ValueError:
                continue  # a damaged entry hides one attempt, not the lookup
    return out


@dataclass(frozen=True, slots=True)
class Tombstone:
    """A finished delivery as remembered for the done-retention."""

    id_prefix: str
    finished: str  # delivered | dead_lettered | gone
    type: str
    origin: str
    attempts: list[AttemptRecord]

    def encode(self) -> str:
        history = ",".join(a.encode() for a in self.attempts[-MAX_HISTORY:])
        finish = FINISH_CODES.get(self.finished, "?")
        kind = RESULT_TYPE_CODES.get(self.type, "?")
        return f"\n{self.id_prefix} {finish} {kind} {self.origin} {history}"


AT_CHARS = 8  # unix milliseconds in base 36, until 2059
ORIGIN_REF_CHARS = 6


@dataclass(frozen=True, slots=True)
class CompactDone:
    """A delivery that got 200 at its first attempt, as remembered in its key's idempotency
    record (field ``w``, space-separated, ~25 bytes; issue 17), in fixed-width parts::

        <delivery id, 8 hex><type code><origin ref, 6><start ms, base 36, 8><latency ms, base 36>

    The origin itself is named once per shard and tombstone bucket (field ``o:<ref>``)."""

    id_prefix: str
    type: str
    origin_ref: str
    at_ms: int
    latency_ms: int

    def encode(self) -> str:
        kind = RESULT_TYPE_CODES.get(self.type, "?")
        at = _base36(self.at_ms).rjust(AT_CHARS, "0")
        return f"{self.id_prefix}{kind}{self.origin_ref}{at}{_base36(self.latency_ms)}"

    @property
    def attempt(self) -> AttemptRecord:
        return AttemptRecord(self.at_ms, "success", 200, self.latency_ms)


def decode_compact(value: str) -> list[CompactDone]:
    """Every compact marker in a record's ``w`` field (damaged ones are skipped)."""
    out = []
    ref_at = ID_PREFIX_CHARS + 1
    at_at = ref_at + ORIGIN_REF_CHARS
    for m in value.split():
        try:
            at, latency = int(m[at_at : at_at + AT_CHARS], 36), int(m[at_at + AT_CHARS :], 36)
        except ValueError:
            continue
        kind = _TYPES.get(m[ID_PREFIX_CHARS], "unknown")
        out.append(CompactDone(m[:ID_PREFIX_CHARS], kind, m[ref_at:at_at], at, latency))
    return out


def origin_ref(origin: str) -> str:
    """A short name of an origin (31 bits, base 36, 6 characters): unique among the origins of
    one shard's tombstone bucket in practice (a clash shows the wrong origin in a lookup)."""
    digest = hashlib.blake2b(origin.encode(), digest_size=4).digest()
    return _base36(int.from_bytes(digest, "big") >> 1).rjust(ORIGIN_REF_CHARS, "0")


def id_prefix(delivery_id: str) -> str:
    return delivery_id[:ID_PREFIX_CHARS]


def marker(delivery_id: str) -> str:
    """What the schedule script looks for in a key's tombstones: a line starting with the id."""
    return f"\n{id_prefix(delivery_id)} "


def decode_tombstones(value: str) -> list[Tombstone]:
    """Every finished delivery in one key's tombstone field (damaged lines are skipped)."""
    out = []
    for line in value.splitlines():
        parts = line.split(" ")
        if len(parts) != 5:
            continue
        id_prefix, finish, kind, origin, history = parts
        out.append(
            Tombstone(
                id_prefix,
                _FINISHES.get(finish, "unknown"),
                _TYPES.get(kind, "unknown"),
                origin,
                decode_history(history),
            )
        )
    return out
