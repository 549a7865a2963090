"""Parse a request record's JSON only when the relay can carry every part of it to the end.

Python's ``json`` accepts what the rest of the relay cannot: nesting deep enough to exhaust the
interpreter's recursion (or pydantic's serializer, which stops at 255 levels), ``NaN`` and
``Infinity``, numbers that overflow, repeated keys (the last one silently wins) and lone UTF-16
surrogates (``"\\ud800"``) that no UTF-8 encoder will write. A record carrying any of them would be
charged and then never published, or never decoded at all. Each is refused here, before anything is
spent, with the dead-letter reason the README documents.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

from relay.exceptions import RecordUndecodable
from relay.models import bounded_text

# What a JSON number may be: an integer in 64 bits (signed or unsigned), a finite double.
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1
_MAX_INT_CHARS = 21  # "-9223372036854775808" and "18446744073709551615" fit; longer never does
NAME_CHARS = 80  # how much of a producer's key a message quotes

# Strings (so their brackets do not count) and runs of anything but brackets and quotes; what is
# left is the bracket skeleton. Possessive repeats: an unterminated string costs one linear scan.
_NOT_NESTING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"|[^\[\]{}"]++', re.DOTALL)
_LEVEL_STEP = {"[": 1, "{": 1, "]": -1, "}": -1, '"': 0}
# A \u escape in the high or low surrogate range; without one, no string can hold a surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def nesting_exceeds(text: str, max_depth: int) -> bool:
    """Whether arrays and objects in ``text`` nest deeper than ``max_depth`` (the outermost is 1).

    Linear, without recursion and without a Python step per character: a regex strips strings
    and scalars, then C iterators run the depth and stop at the first level past the bound.
    """
    skeleton = _NOT_NESTING.sub("", text)
    levels = accumulate(map(_LEVEL_STEP.__getitem__, skeleton))
    return next(filter(max_depth.__lt__, levels), None) is not None


def parse_strict_json(text: str, *, max_depth: int) -> Any:
    """The JSON value of ``text``; raises ``RecordUndecodable`` with the reason to dead-letter it.

    Reasons: ``not_json`` (a byte order mark included: RFC 8259 forbids sending one),
    ``json_too_deep``, ``invalid_number``, ``duplicate_key``, ``lone_surrogate``.
    """
    if text.startswith("\ufeff"):
        raise RecordUndecodable(
            "not_json", "the value starts with a byte order mark (U+FEFF); send JSON without one"
        )
    if nesting_exceeds(text, max_depth):
        raise RecordUndecodable(
            "json_too_deep",
            f"objects and arrays nest deeper than {max_depth} levels (RELAY_MAX_JSON_DEPTH)",
        )
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_int=_int,
            parse_float=_float,
        )
    except ValueError as exc:
        raise RecordUndecodable("not_json", f"the value is not JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(value)
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RecordUndecodable(
                    "duplicate_key", f'the key "{_name(key)}" appears twice in one object'
                )
            seen.add(key)
    return obj


def _constant(name: str) -> float:
    raise RecordUndecodable("invalid_number", f"{name} is not a JSON number")


def _int(literal: str) -> int:
    # Checked before converting: int() of a huge literal is quadratic, and Python refuses
    # literals over 4300 digits with a ValueError that would read as "not JSON".
    if len(literal) <= _MAX_INT_CHARS:
        number = int(literal)
        if MIN_INT <= number <= MAX_INT:
            return number
    raise RecordUndecodable(
        "invalid_number",
        f"the integer {bounded_text(literal, NAME_CHARS)} does not fit in 64 bits",
    )


def _float(literal: str) -> float:
    number = float(literal)
    if math.isfinite(number):
        return number
    raise RecordUndecodable(
        "invalid_number",
        f"the number {bounded_text(literal, NAME_CHARS)} overflows a double",
    )


def _refuse_lone_surrogates(value: Any) -> None:
    for path, text in _strings(value):
        if _SURROGATE.search(text):
            raise RecordUndecodable(
                "lone_surrogate",
                f"{path or 'the value'} holds a lone UTF-16 surrogate escape (such as \\ud800), "
                "which UTF-8 cannot encode",
            )


def _strings(value: Any) -> Iterator[tuple[str, str]]:
    """Every string in ``value``, keys included, with where it is (``metadata.note``,
    ``input.image_urls[2]``, ``a key in metadata``); iterative, so depth costs no recursion."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            yield path, item
        elif isinstance(item, dict):
            for key, child in item.items():
                yield f"a key in {path or 'the record'}", key
                stack.append((f"{path}.{_name(key)}" if path else _name(key), child))
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in enumerate(item))


def _name(key: str) -> str:
    return bounded_text(key, NAME_CHARS)
