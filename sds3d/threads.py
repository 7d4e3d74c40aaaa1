"""CPU thread count from the cores this process can really use.

torch's default uses every core of the machine. On a shared machine that is the slow case: an
OpenMP team waits at every barrier for its slowest thread, so when another busy process holds one
of two cores a 2-thread step takes several times the 1-thread time. sds3d therefore picks

    threads = max(1, round(usable - busy_others))

where ``usable`` is the smaller of the CPU affinity mask and the cgroup quota
(``/sys/fs/cgroup/cpu.max``: quota / period), and ``busy_others`` is the number of cores that
other processes kept busy over a short sample of ``/proc/stat`` (the machine's busy time minus this
process's own, from ``/proc/self/stat``). A count the user sets always wins: ``--threads N`` first,
then ``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import torch

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpus(path: Path = CGROUP_CPU_MAX) -> float | None:
    """CPUs allowed by a cgroup v2 quota (``"QUOTA PERIOD"``), or None without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(int(quota) / int(period), 0.0) or None
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpus(affinity: int | None = None, cgroup: Path = CGROUP_CPU_MAX) -> float:
    """min(affinity mask, cgroup quota)."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpus(cgroup)
    return float(affinity) if quota is None else min(float(affinity), quota)


def _machine_busy_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def self_stat() -> list[str] | None:
    """The fields of ``/proc/self/stat`` after ``pid (comm)`` (field 3 first), or None off Linux."""
    try:
        stat = Path("/proc/self/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()
    except (OSError, ValueError):
        return None


def _own_ticks() -> int | None:
    """utime + stime of this process (all threads) in jiffies."""
    fields = self_stat()
    try:
        return None if fields is None else int(fields[11]) + int(fields[12])
    except (ValueError, IndexError):
        return None


def busy_other_cpus(
    sample_s: float = 0.2,
    machine: Callable[[], tuple[int, int] | None] = _machine_busy_ticks,
    own: Callable[[], int | None] = _own_ticks,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
    hz: int | None = None,
) -> float:
    """Cores other processes kept busy over ``sample_s`` seconds (0 where /proc is missing):
    (machine busy jiffies - own jiffies) / hz / elapsed seconds. The readers are parameters so
    tests can feed fixed /proc values."""
    m0, o0, t0 = machine(), own(), clock()
    if m0 is None or o0 is None:
        return 0.0
    sleep(sample_s)
    m1, o1, t1 = machine(), own(), clock()
    if m1 is None or o1 is None or t1 <= t0:
        return 0.0
    if hz is None:
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    others = (m1[0] - m0[0]) - (o1 - o0)
    return max(others / hz / (t1 - t0), 0.0)


def auto_threads(usable: float, busy_others: float) -> int:
    """max(1, round(usable - busy_others)), halves rounding up (a 1.5-CPU quota gives 2)."""
    return max(1, int(math.floor(usable - busy_others + 0.5)))


def user_threads(requested: int = 0) -> int | None:
    """The count the user set: ``requested`` (> 0), else OMP_NUM_THREADS, else None."""
    if requested > 0:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return None


def configure_threads(requested: int = 0, sample_s: float = 0.2) -> tuple[int, str]:
    """Set torch's intra-op thread count; returns (threads, why) for summary.json."""
    user = user_threads(requested)
    if user is not None:
        n, why = user, ("--threads" if requested > 0 else "OMP_NUM_THREADS")
    else:
        usable, others = usable_cpus(), busy_other_cpus(sample_s)
        n, why = auto_threads(usable, others), f"auto: {usable:g} usable CPUs, {others:.1f} busy with other processes"
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n, why
