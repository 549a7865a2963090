"""``relay submit`` mistakes that are said before any broker is contacted, its one-line Kafka
error, and its documented exit codes (no service needed: Kafka is a closed port here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay.cli import main
from relay.devtools.processes import free_port

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def no_kafka(monkeypatch: pytest.MonkeyPatch) -> int:
    """``RELAY_*`` cleared and Kafka pointed at a port nothing listens on; returns the port."""
    for name in [n for n in os.environ if n.upper().startswith("RELAY_")]:
        monkeypatch.delenv(name)
    port = free_port()
    monkeypatch.setenv("RELAY_KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{port}")
    return port


def _submit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(["submit", *argv])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "{'prompt': 'x'}"], "--input is not valid JSON: Expecting property name"),
        (["--input", '["a panda"]'], "--input must be a JSON object, got list"),
        (["--metadata", "tenant", "--prompt", "x"], "--metadata wants K=V, got 'tenant'"),
        (
            ["--prompt", "a panda", "--n", "99"],
            "the relay would reject this input for apimart-doubao-seedance-4-0: input.n: "
            "Input should be less than or equal to 15",
        ),
        (
            ["--input", '{"prompt": "a panda", "colour": "red"}'],
            "input.colour: is not a known field of this model",
        ),
        (["--prompt", "x", "--key", "bad key\u00e9"], "idempotency_key:"),
    ],
    ids=["bad-json", "not-an-object", "bad-metadata", "schema", "unknown-field", "bad-key"],
)
def test_bad_requests_are_refused_before_kafka_is_contacted(
    no_kafka: int, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, lines = _submit(capsys, *argv)
    assert code == 2, "usage: Kafka (a closed port) was never tried, or this would be 1"
    assert len(lines) == 1, lines
    assert lines[0].startswith("relay submit: ")
    assert message in lines[0]


def test_unreachable_kafka_is_one_line_naming_the_variable(
    no_kafka: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = _submit(capsys, "--prompt", "a panda")
    assert code == 1
    assert lines == [
        f"relay submit: cannot reach Kafka at 127.0.0.1:{no_kafka} (no bootstrap server "
        "answered); check RELAY_KAFKA_BOOTSTRAP_SERVERS"
    ]


def test_exit_codes_are_documented_in_help_and_readme(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["submit", "--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    readme = README.read_text(encoding="utf-8")
    for text in (help_text, readme):
        assert "exit codes" in text.lower()
    for line in ("0  submitted (without --wait)", "3  --wait timed out"):
        assert line in help_text
    for row in ("| 0 |", "| 1 |", "| 2 |", "| 3 |"):
        assert row in readme, f"README's relay submit exit codes lack {row}"
