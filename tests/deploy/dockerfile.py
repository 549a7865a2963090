"""A small Dockerfile reader: instructions per stage, continuation lines joined."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (ENTRYPOINT, CMD, HEALTHCHECK ... CMD)."""
        start = self.args.index("[")
        value = json.loads(self.args[start:])
        assert isinstance(value, list)
        return [str(part) for part in value]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """``ENV k=v k2=v2`` pairs (the only ENV form the Dockerfile uses)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for key, value in re.findall(
                r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', instruction.args
            ):
                values[key] = value.strip('"')
        return values


def parse_dockerfile(path: Path) -> list[Stage]:
    """Split a Dockerfile into stages; ``ARG`` lines before the first ``FROM`` are dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            assert match, f"unreadable FROM line: {line}"
            stages.append(Stage(match.group(1), match.group(2)))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages
