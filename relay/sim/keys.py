"""API keys as MindVideo's dashboard manages them: created, disabled (revoked), deleted.

Tests drive this through ``POST /_sim/keys`` to prove the relay stops on 401 and on 402 and
resumes when the key is restored or credited.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


class KeyStatus(Enum):
    """What ``Authorization: Bearer <key>`` resolves to."""

    ACTIVE = "active"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass
class _KeyState:
    active: bool = True
    credit: bool = True


class KeyChange(BaseModel):
    """Body of ``POST /_sim/keys``; applied in the order add, the four toggles, then remove."""

    model_config = ConfigDict(extra="forbid")

    add: list[str] = Field(default_factory=list)
    revoke: list[str] = Field(default_factory=list)
    restore: list[str] = Field(default_factory=list)
    no_credit: list[str] = Field(default_factory=list)
    credit: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


class KeyView(BaseModel):
    """One key and its state; the simulator echoes keys in full (they are test keys)."""

    key: str
    active: bool
    credit: bool


class KeysBody(BaseModel):
    """Body of ``GET``/``POST /_sim/keys``."""

    keys: list[KeyView]


class KeyRing:
    """The configured keys with their run-time state; new keys start active and in credit."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys: dict[str, _KeyState] = {key: _KeyState() for key in keys}

    def status(self, key: str) -> KeyStatus:
        """Whether ``key`` is active, revoked, or unknown (never added, or removed)."""
        state = self._keys.get(key)
        if state is None:
            return KeyStatus.UNKNOWN
        return KeyStatus.ACTIVE if state.active else KeyStatus.REVOKED

    def has_credit(self, key: str) -> bool:
        """Whether a new task may be charged to ``key`` (else 402)."""
        state = self._keys.get(key)
        return state is not None and state.credit

    def apply(self, change: KeyChange) -> None:
        """Apply all of ``change`` or, if it names a key that does not exist, none of it."""
        added = {key for key in change.add if key}
        known = set(self._keys) | added
        named = [
            *change.revoke,
            *change.restore,
            *change.no_credit,
            *change.credit,
            *change.remove,
        ]
        unknown = sorted({key for key in named if key not in known})
        if unknown or len(added) != len(change.add):
            raise ValueError(f"unknown or empty keys: {unknown or ['']}")
        for key in change.add:
            self._keys.setdefault(key, _KeyState())
        for key in change.revoke:
            self._keys[key].active = False
        for key in change.restore:
            self._keys[key].active = True
        for key in change.no_credit:
            self._keys[key].credit = False
        for key in change.credit:
            self._keys[key].credit = True
        for key in change.remove:
            self._keys.pop(key, None)

    def view(self) -> KeysBody:
        return KeysBody(
            keys=[KeyView(key=k, active=s.active, credit=s.credit) for k, s in self._keys.items()]
        )
