"""A corpus of hostile request records and the outcome the README documents for each.

Shared by the unit tests of decode (``tests/pipeline/test_decode_hostile.py``) and the end-to-end
test on one partition (``tests/pipeline/test_hostile_records.py``). Keys carry a prefix so that
each test run has its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

MODEL = "apimart-doubao-seedance-4-0"
MAX_JSON_DEPTH = 32  # the default of RELAY_MAX_JSON_DEPTH
MAX_RECORD_BYTES = 256 * 1024  # the default of RELAY_MAX_RECORD_BYTES
MAX_METADATA_BYTES = 4096  # the default of RELAY_MAX_METADATA_BYTES

Outcome = Literal["dead_letter", "rejected", "request"]


@dataclass(frozen=True)
class Hostile:
    """One record and what must become of it.

    ``outcome``: ``dead_letter`` (with ``code`` as its reason, and a rejection with the same code
    under ``result_key`` when that is set), ``rejected`` (a ``request.rejected`` with ``code`` under
    ``result_key``) or ``request`` (decoded; MindVideo then runs it, or refuses it with
    ``mindvideo_code``).
    """

    name: str
    key: bytes | None
    value: bytes | None
    outcome: Outcome
    code: str | None
    result_key: str | None
    mindvideo_code: str | None = None


def nested(depth: int, leaf: str = "1") -> str:
    """JSON text: the JSON ``leaf`` inside ``depth`` levels of single-key objects (as text,
    because ``json.dumps`` itself recurses)."""
    return '{"a": ' * depth + leaf + "}" * depth


def _field(name: str) -> dict[str, Any]:
    return {name: 1}


def hostile_corpus(prefix: str) -> list[Hostile]:
    """The corpus, its keys starting with ``prefix``."""

    def key(name: str) -> str:
        return f"{prefix}-{name}"

    def body(name: str, *, raw: dict[str, str] | None = None, **fields: object) -> bytes:
        """A request record, valid unless ``fields`` spoil it; ``raw`` gives top-level fields as
        JSON text, for what ``json.dumps`` will not write."""
        raw = raw or {}
        record: dict[str, object] = {"model": MODEL, "input": {"prompt": f"prompt of {name}"}}
        record.update(fields)
        record.update({field: f"@@{field}@@" for field in raw})
        text = json.dumps(record)
        for field, json_text in raw.items():
            text = text.replace(f'"@@{field}@@"', json_text)
        return text.encode()

    def n_is(literal: str) -> dict[str, str]:
        return {"input": '{"prompt": "x", "n": ' + literal + "}"}

    def dead(name: str, value: bytes | None, reason: str, *, keyed: bool = True) -> Hostile:
        record_key = key(name).encode() if keyed else None
        return Hostile(name, record_key, value, "dead_letter", reason, key(name) if keyed else None)

    def rejected(name: str, value: bytes, code: str, *, record_key: bytes | None = None) -> Hostile:
        return Hostile(name, record_key or key(name).encode(), value, "rejected", code, key(name))

    def request(name: str, value: bytes, mindvideo_code: str | None = None) -> Hostile:
        return Hostile(name, key(name).encode(), value, "request", None, key(name), mindvideo_code)

    depth = MAX_JSON_DEPTH  # record 1, metadata 2: metadata nested n deep reaches level n + 1
    return [
        # Nesting (issue 10: these got no outcome and held the partition's offset for good).
        dead("deep-array", ("[" * 100_000 + "]" * 100_000).encode(), "json_too_deep"),
        dead("deep-input", body("deep-input", raw={"input": nested(5_000)}), "json_too_deep"),
        dead("deep-meta", body("deep-meta", raw={"metadata": nested(300)}), "json_too_deep"),
        dead("deep-open", b"[" * 200_000, "json_too_deep"),
        dead("deep-by-one", body("by-one", raw={"metadata": nested(depth)}), "json_too_deep"),
        request("deep-at-limit", body("at-limit", raw={"metadata": nested(depth - 1)})),
        request("brackets-in-string", body("brackets", input={"prompt": "[{" * 500})),
        # Lone surrogates: json.dumps writes them as \ud800 escapes.
        dead("sur-meta", body("sur-meta", metadata={"note": "\ud800"}), "lone_surrogate"),
        dead("sur-model", body("sur-model", model="seedance\ud800"), "lone_surrogate"),
        dead("sur-input", body("sur-input", input={"prompt": "a \udfff panda"}), "lone_surrogate"),
        dead("sur-key", body("sur-key", metadata={"\udc00": 1}), "lone_surrogate"),
        dead("sur-body-key", body("x", idempotency_key="k\ud800"), "lone_surrogate", keyed=False),
        request("pair-escape", body("pair", input={"prompt": "a panda \U0001f43c"})),
        # Numbers.
        dead("nan", body("nan", raw=n_is("NaN")), "invalid_number"),
        dead("neg-inf", body("neg-inf", raw=n_is("-Infinity")), "invalid_number"),
        dead("overflow", body("overflow", raw=n_is("1e400")), "invalid_number"),
        dead("huge-int", body("huge-int", metadata={"id": 10**30}), "invalid_number"),
        dead("digits-5000", body("digits", raw=n_is("9" * 5000)), "invalid_number"),
        request("int-64-bit", body("int-64", metadata={"id": 2**64 - 1, "neg": -(2**63)})),
        # Duplicate keys.
        dead(
            "dup-top",
            b'{"model": "%s", "model": "x", "input": {}}' % MODEL.encode(),
            "duplicate_key",
        ),
        dead(
            "dup-input",
            body("dup", raw={"input": '{"prompt": "x", "prompt": "y"}'}),
            "duplicate_key",
        ),
        # Bytes that are not UTF-8 or not JSON.
        dead("overlong", b'{"model": "\xc0\xaf"}', "not_utf8"),
        dead("utf8-surrogate", b'{"model": "\xed\xa0\x80"}', "not_utf8"),
        dead("bom", b"\xef\xbb\xbf" + body("bom"), "not_json"),
        dead("trailing", body("trailing") + b" x", "not_json"),
        dead("comment", b'{"model": "x", /* no */ "input": {}}', "not_json"),
        dead("zero-bytes", b"", "empty_value"),
        dead("tombstone", None, "empty_value"),
        dead(
            "too-large",
            body("too-large", metadata={"pad": "x" * MAX_RECORD_BYTES}),
            "record_too_large",
        ),
        dead("string", b'"just a string"', "not_object"),
        dead("number", b"42", "not_object"),
        dead("null", b"null", "not_object"),
        # Keys.
        rejected(
            "rk-nul",
            body("rk-nul", idempotency_key=key("rk-nul")),
            "invalid_record_key",
            record_key=b"abc\x00def",
        ),
        rejected(
            "rk-bytes",
            body("rk-bytes", idempotency_key=key("rk-bytes")),
            "invalid_record_key",
            record_key=b"\xff\xfe",
        ),
        rejected(
            "rk-long",
            body("rk-long", idempotency_key=key("rk-long")),
            "invalid_record_key",
            record_key=b"k" * 300,
        ),
        Hostile(
            "rk-only",
            b"caf\xc3\xa9 key",
            body("rk-only"),
            "dead_letter",
            "invalid_record_key",
            None,
        ),
        Hostile("no-key", None, body("no-key"), "dead_letter", "no_idempotency_key", None),
        rejected(
            "mismatch", body("mismatch", idempotency_key="another"), "idempotency_key_mismatch"
        ),
        # Fields the relay would carry to the end: bounded and encodable.
        rejected("model-200kb", body("model-200kb", model="m" * 200_000), "invalid_request"),
        rejected("field-100kb", body("field-100kb", **_field("f" * 100_000)), "invalid_request"),
        rejected("nul-field", body("nul-field", **_field("mo\x00del")), "invalid_request"),
        rejected("url-scheme", body("url", webhook_url="javascript:alert(1)"), "invalid_request"),
        rejected(
            "url-crlf", body("url", webhook_url="https://a.example/\r\nX: y"), "invalid_request"
        ),
        rejected("input-list", body("input-list", input=["a", "panda"]), "invalid_request"),
        rejected(
            "meta-large",
            body("meta-large", metadata={"pad": "x" * MAX_METADATA_BYTES}),
            "metadata_too_large",
        ),
        rejected("size", body("size", input={"prompt": "x", "size": "5:4"}), "invalid_input"),
        request("nul-meta-key", body("nul-meta-key", metadata={"a\x00b": "c\x00d"})),
        # Passed through to MindVideo, which refuses it (nothing charged); the label is "other".
        request("unknown-model", body("unknown-model", model="u" * 200), "model_not_found"),
    ]
