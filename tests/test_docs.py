"""The README stays true: every setting the relay reads is documented with its default."""

from __future__ import annotations

import re
from pathlib import Path

from relay.settings import RelaySettings

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_setting_is_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [
        f"RELAY_{name.upper()}"
        for name in RelaySettings.model_fields
        if f"`RELAY_{name.upper()}`" not in text
    ]
    assert missing == [], f"settings missing from README.md: {missing}"


def test_readme_quickstart_names_the_ci_test_command() -> None:
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q" in text
    assert "python -m pytest -q" in ci
    assert "relay dev" in text
    [command] = re.findall(r"^TEST_COMMAND=\((.*)\)$", ci, flags=re.MULTILINE)
    assert command in text, f"the README shows the command CI runs: {command}"
