"""Budget rules (``RELAY_BUDGETS``) and their calendar windows in UTC.

A rule is one budget (``global``), one budget per model slug (``model``) or one per distinct value
of a metadata field (``metadata.<field>``, e.g. a tenant); a request without that field is not
limited by the rule. Each budget instance counts spend within calendar windows (``minute``,
``hour``, ``day``, ``month``, in UTC): the window of a moment is named by its start, so every relay
process computes the same name without talking to the others.

Instances are named in Redis by a digest of their scope value, never by the value itself: model
slugs and metadata values are producer-controlled strings.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

WindowName = Literal["minute", "hour", "day", "month"]
GLOBAL_SCOPE = "global"
MODEL_SCOPE = "model"
METADATA_PREFIX = "metadata."
RULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
METADATA_FIELD = re.compile(r"[\x21-\x7e]{1,64}")
GLOBAL_INSTANCE = "-"
SCOPE_DIGEST_CHARS = 16


class BudgetRule(BaseModel):
    """One entry of ``RELAY_BUDGETS``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    scope: str
    window: WindowName
    limit_usd: float = Field(ge=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if RULE_NAME.fullmatch(value) is None:
            raise ValueError("a budget name is 1-64 characters of letters, digits, '_', '.', '-'")
        return value

    @field_validator("scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        if value in (GLOBAL_SCOPE, MODEL_SCOPE):
            return value
        field = value.removeprefix(METADATA_PREFIX)
        if value.startswith(METADATA_PREFIX) and METADATA_FIELD.fullmatch(field):
            return value
        raise ValueError("scope is 'global', 'model' or 'metadata.<field>'")

    @field_validator("limit_usd")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("limit_usd must be a finite number of USD")
        return value

    @property
    def metadata_field(self) -> str | None:
        return self.scope.removeprefix(METADATA_PREFIX) if self.is_metadata else None

    @property
    def is_metadata(self) -> bool:
        return self.scope.startswith(METADATA_PREFIX)


def parse_rules(value: object) -> list[BudgetRule]:
    """``RELAY_BUDGETS`` as rules: a JSON list (or an already parsed one); names must be unique."""
    data = _json(value, "a JSON list of budget rules")
    if not isinstance(data, list):
        raise ValueError("must be a JSON list of rules like [{...}]")
    rules = [BudgetRule.model_validate(item) for item in data]
    names = [rule.name for rule in rules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"budget names must be unique: {', '.join(duplicates)}")
    return rules


def _json(value: object, what: str) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ValueError(f"must be {what}: {exc}") from None
    return value


@dataclass(frozen=True, slots=True)
class Window:
    """One calendar window: ``[start_s, end_s)`` in unix seconds, ``id`` names it in Redis."""

    name: WindowName
    id: str
    start_s: float
    end_s: float


def window_at(name: WindowName, moment_s: float) -> Window:
    """The ``name`` window that contains ``moment_s`` (UTC)."""
    moment = datetime.fromtimestamp(moment_s, UTC)
    if name == "minute":
        start = moment.replace(second=0, microsecond=0)
        end, fmt = start + timedelta(minutes=1), "%Y%m%d%H%M"
    elif name == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        end, fmt = start + timedelta(hours=1), "%Y%m%d%H"
    elif name == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end, fmt = start + timedelta(days=1), "%Y%m%d"
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        next_month = start.month % 12 + 1
        end = start.replace(year=start.year + (start.month == 12), month=next_month)
        fmt = "%Y%m"
    return Window(name, start.strftime(fmt), start.timestamp(), end.timestamp())


def scope_digest(value: object) -> str:
    """A bounded, stable name for a scope value (a model slug or any JSON metadata value)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "backslashreplace")).hexdigest()[
        :SCOPE_DIGEST_CHARS
    ]


@dataclass(frozen=True, slots=True)
class BudgetInstance:
    """The budget of one rule that applies to one request, in the window of one moment."""

    rule: BudgetRule
    instance: str  # GLOBAL_INSTANCE or a scope digest
    window: Window

    @property
    def entry(self) -> str:
        """``<rule>:<window id>:<instance>``: what a reservation remembers it touched."""
        return f"{self.rule.name}:{self.window.id}:{self.instance}"


def applicable(
    rules: list[BudgetRule], model: str, metadata: dict[str, Any] | None, moment_s: float
) -> list[BudgetInstance]:
    """The budgets a request of ``model`` with ``metadata`` must have room in at ``moment_s``."""
    out = []
    for rule in rules:
        if rule.scope == GLOBAL_SCOPE:
            instance = GLOBAL_INSTANCE
        elif rule.scope == MODEL_SCOPE:
            instance = scope_digest(model)
        else:
            field = rule.metadata_field
            value = (metadata or {}).get(field or "")
            if value is None:
                continue  # requests without the field are not limited by this rule
            instance = scope_digest(value)
        out.append(BudgetInstance(rule, instance, window_at(rule.window, moment_s)))
    return out
