"""Keeping the web workers' import of nginx's log out of serving's way at a peak.

At an exam-time peak nginx sends tens of thousands of granted downloads a second, and
recording each costs far more CPU in Python than nginx spends sending it: an import running
flat out on the same CPUs would take a CPU's worth of serving. The workers' import therefore
pauses after each step while the machine's CPUs are busy, so that it works at most
ANALYTICS_NGINX_IMPORT_SHARE of the time; when at least a quarter of a CPU was idle
meanwhile the CPUs are not saturated, it takes nothing from serving and goes on at once, so
it catches up at full speed after the peak. (Half a CPU was too strict: on PostgreSQL the
import's own work, the worker plus the database server, leaves less than that idle on two
CPUs, and the import then crawled at its peak pace long after the peak.)

Why by hand: the busy test is two readings of /proc/stat's first line; no library here
paces a loop by the machine's idle time (``nice`` needs a process of its own: that is
ANALYTICS_NGINX_IMPORT=external).
"""

from __future__ import annotations

import os

#: The kernel's CPU time counters (Linux); elsewhere the CPUs always count as busy.
PROC_STAT = "/proc/stat"
#: The longest pause: a step that took unusually long (a slow database, a stopped process)
#: must not park the import for minutes.
MAX_PAUSE = 2.0


def cpu_times(path: str | None = None) -> tuple[int, int] | None:
    """(idle, total) clock ticks of all CPUs since boot, or None where unknown."""
    try:
        with open(path or PROC_STAT, "rb") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    return fields[3] + fields[4], sum(fields)  # idle + iowait, all


class Pacer:
    """How long to pause after each step of an import that may take ``share`` of the time."""

    def __init__(self, share: float, cpus: int | None = None) -> None:
        self.share = share
        #: idle share of all CPUs that means "at least a quarter of a CPU was free"
        self.spare = 0.25 / (cpus or os.cpu_count() or 1)
        self.last = cpu_times()

    def busy(self) -> bool:
        """Whether less than a quarter of a CPU was idle since the last call (unknown:
        busy)."""
        now, last = cpu_times(), self.last
        self.last = now
        if now is None or last is None or now[1] <= last[1]:
            return True
        return (now[0] - last[0]) / (now[1] - last[1]) < self.spare

    def pause(self, worked: float) -> float:
        """Seconds to pause after a step that took ``worked`` seconds."""
        if self.share >= 1 or not self.busy():
            return 0.0
        return min(MAX_PAUSE, worked * (1 / self.share - 1))
