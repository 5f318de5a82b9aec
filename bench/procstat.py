"""CPU time and resident memory of server processes, read from ``/proc``.

``cpu_seconds`` sums ``utime + stime`` (fields 14 and 15 of ``/proc/PID/stat``, in
clock ticks) over a set of processes and all their descendants (so a ``--workers``
supervisor's children count too); the orchestrator samples it before and after each
load run and divides the difference by the requests served. ``rss_bytes`` reads
``VmRSS`` from ``/proc/PID/status``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out.extend(int(p) for p in task.read_text().split())
        except OSError:
            continue
    return out


def with_descendants(pids: Iterable[int]) -> list[int]:
    """``pids`` and every process below them."""
    seen: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(_children(pid))
    return seen


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds consumed so far by ``pids`` and their descendants."""
    ticks = 0
    for pid in with_descendants(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 counting from 1)
    return ticks / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def total_rss_bytes(pids: Iterable[int]) -> int:
    """Summed resident set size of ``pids`` and their descendants."""
    return sum(rss_bytes(pid) for pid in with_descendants(pids))
