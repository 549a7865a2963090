"""What a process costs, read from ``/proc``: resident memory, CPU time and open descriptors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    rss_bytes: int
    cpu_s: float
    open_fds: int


def sample(pid: int) -> ProcSample:
    """RSS (``VmRSS``), user+system CPU seconds so far, and the number of open descriptors."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    # Field 2 (comm) may hold spaces: split after its closing parenthesis.
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(stat[11]), int(stat[12])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return ProcSample(rss_kb * 1024, (utime + stime) / CLOCK_TICKS_PER_S, fds)
