"""Every command's ``--help`` lists its exit codes (issue 16)."""

from __future__ import annotations

import pytest

from relay.cli import build_parser


@pytest.mark.parametrize(
    ("argv", "codes"),
    [
        (["run"], ["0 stopped", "1 a dependency", "2 configuration", "4 the stop"]),
        (["dev"], ["0 stopped", "1 a service", "2 configuration"]),
        (["submit"], ["0  submitted", "1  the result", "2  usage", "3  --wait"]),
        (["reconcile"], ["0 MindVideo", "1 drift", "2 usage", "3 Kafka"]),
        (["webhooks", "replay"], ["0 done", "1 Kafka", "2 usage"]),
        (["webhooks", "status"], ["0 attempts", "1 none", "2 usage"]),
    ],
)
def test_help_lists_exit_codes(
    argv: list[str], codes: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit codes" in text
    for code in codes:
        assert " ".join(code.split()) in text, (argv, code)
