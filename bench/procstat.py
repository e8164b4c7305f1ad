"""What /proc says about a process (CPU time, resident memory) and about the whole machine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / TICKS_PER_SECOND


def rss_bytes(pid: int) -> int:
    """VmRSS: resident memory right now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True, slots=True)
class MachineTimes:
    """Jiffies of all CPUs from /proc/stat: busy (not idle or iowait) and in total."""

    busy: int
    total: int

    @classmethod
    def read(cls) -> MachineTimes:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal (guest times are already in user/nice)
        idle = values[3] + values[4]
        total = sum(values[:8])
        return cls(total - idle, total)

    def busy_seconds_since(self, before: MachineTimes) -> float:
        return (self.busy - before.busy) / TICKS_PER_SECOND
