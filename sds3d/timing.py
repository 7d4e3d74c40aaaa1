"""Where a run's wall-clock time goes: ``summary.json``'s ``phases``.

One clock (``time.perf_counter``) is read at each boundary, so the phases of a run add up to its
``seconds`` exactly (to float rounding), in this order:

    setup       config checks, the memory check, the run folder, config.json, the thread count
    load        the priors (models or the exemplar library) and the prompt embeddings
    build       the guidance and the scene (and a resumed checkpoint)
    train       the step loop, with its previews and periodic checkpoints
    checkpoint  the final finite check and checkpoint
    turntable   the final preview and the turntable video
    export      mesh and splat export (with the mesh's fidelity renders)
    stopped     (a failed or interrupted run) from the last boundary passed to the stop

``startup`` comes before them, for the first run of a process only: the seconds from the
process's start (``/proc/self/stat``; the interpreter, imports and option parsing) to the call of
:func:`sds3d.train.generate`. So on Linux ``startup + seconds`` is the process's wall time up to
the writing of summary.json, the last thing a run does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sds3d.threads import self_stat

PHASES = ("setup", "load", "build", "train", "checkpoint", "turntable", "export")
"""The phases of a run after ``startup``, in order."""


def process_age() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where that is unknown."""
    fields = self_stat()
    try:
        start_ticks = int(fields[19])  # field 22 (starttime); fields start at field 3
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (TypeError, OSError, ValueError, IndexError):
        return None


class Phases:
    """Seconds per phase: :meth:`mark` closes the phase that ran since the previous mark."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self._last = self.start
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> float:
        """Close phase ``name`` now (adding to it if it ran before); returns the clock reading."""
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now
        return now

    def total(self) -> float:
        """Seconds from the start to the last mark (the sum of the phases)."""
        return self._last - self.start


_first_run = True


def startup_seconds() -> float | None:
    """The process's age at the first call (its startup), None at later calls and off Linux."""
    global _first_run
    if not _first_run:
        return None
    _first_run = False
    return process_age()
