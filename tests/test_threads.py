"""Thread count: the user's count wins; otherwise the free cores, from affinity, quota and load."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sds3d import threads


def test_cgroup_quota_parsing(tmp_path: Path) -> None:
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert threads.cgroup_cpus(f) == pytest.approx(1.5)
    f.write_text("max 100000\n")
    assert threads.cgroup_cpus(f) is None
    assert threads.cgroup_cpus(tmp_path / "missing") is None
    f.write_text("garbage\n")
    assert threads.cgroup_cpus(f) is None


@pytest.mark.parametrize("usable,others,expected", [(2, 0.0, 2), (2, 0.97, 1), (2, 2.0, 1), (8, 2.6, 5), (1.5, 0.0, 2), (1.4, 0.0, 1)])
def test_auto_threads_is_the_free_cores(usable: float, others: float, expected: int) -> None:
    assert threads.auto_threads(usable, others) == expected


def test_the_users_count_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert threads.configure_threads(0) == (1, "OMP_NUM_THREADS") and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        n, why = threads.configure_threads(3)
        assert (n, why) == (3, "--threads") and torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        n, why = threads.configure_threads(0, sample_s=0.05)
        assert why.startswith("auto:") and 1 <= n <= threads.usable_cpus() + 0.5
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc")
def test_a_busy_process_is_counted() -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.busy_other_cpus(0.5) > 0.3  # the spinning child holds about one core (less on a loaded machine)
    finally:
        busy.kill()
        busy.wait()


def test_busy_others_from_fixed_proc_values() -> None:
    """Machine busy 250 jiffies in 1 s at 100 Hz, 50 of them ours: 2.0 cores busy with others."""
    machine = iter([(1000, 5000), (1250, 5200)])
    own = iter([10, 60])
    clock = iter([0.0, 1.0])
    got = threads.busy_other_cpus(1.0, machine=lambda: next(machine), own=lambda: next(own),
                                  clock=lambda: next(clock), sleep=lambda s: None, hz=100)
    assert got == pytest.approx(2.0)
    assert threads.busy_other_cpus(1.0, machine=lambda: None, own=lambda: 0, sleep=lambda s: None) == 0.0


def test_usable_is_the_smaller_of_affinity_and_quota(tmp_path: Path) -> None:
    f = tmp_path / "cpu.max"
    f.write_text("100000 100000\n")
    assert threads.usable_cpus(affinity=2, cgroup=f) == 1.0
    f.write_text("max 100000\n")
    assert threads.usable_cpus(affinity=2, cgroup=f) == 2.0
    f.write_text("400000 100000\n")
    assert threads.usable_cpus(affinity=3, cgroup=f) == 3.0
    # 2 usable CPUs, one held by another process: 1 thread
    assert threads.auto_threads(threads.usable_cpus(affinity=2, cgroup=f), 1.0) == 1


def test_configure_threads_auto_from_fake_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """2 usable CPUs: idle gives 2 threads, one other busy process gives 1; OMP_NUM_THREADS still wins."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2.0)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(threads, "busy_other_cpus", lambda s: 0.1)
        assert threads.configure_threads(0)[0] == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(threads, "busy_other_cpus", lambda s: 1.0)
        n, why = threads.configure_threads(0)
        assert n == 1 and torch.get_num_threads() == 1 and why == "auto: 2 usable CPUs, 1.0 busy with other processes"
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert threads.configure_threads(0) == (2, "OMP_NUM_THREADS")
    finally:
        torch.set_num_threads(before)
