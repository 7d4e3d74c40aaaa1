"""The wall-clock phases of summary.json."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from sds3d.timing import PHASES, Phases, process_age


def test_phases_add_up_and_accumulate() -> None:
    p = Phases()
    time.sleep(0.02)
    p.mark("a")
    time.sleep(0.01)
    p.mark("b")
    time.sleep(0.01)
    p.mark("a")  # a phase that runs again adds to itself
    assert set(p.seconds) == {"a", "b"}
    assert p.seconds["a"] >= 0.03 - 1e-3 and p.seconds["b"] >= 0.01 - 1e-3
    assert abs(sum(p.seconds.values()) - p.total()) < 1e-9
    assert PHASES == ("setup", "load", "build", "train", "checkpoint", "turntable", "export")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_age_counts_from_the_process_start() -> None:
    code = "import time; t = time.perf_counter(); time.sleep(0.5); from sds3d.timing import process_age; print(process_age())"
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    age = float(out.stdout)
    assert 0.5 <= age <= wall + 0.02, (age, wall)  # clock ticks: 10 ms
    a, b = process_age(), process_age()
    assert a is not None and b is not None and 0 < a <= b + 0.011

