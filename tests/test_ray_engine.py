"""``sds3d batch --engine ray`` on a local Ray instance started by the driver (CPU, exemplar prior).

Each driver is a separate ``cli.py`` process, as a user runs it: the same folder layout as the
in-process engine, a worker SIGKILLed in the middle of a prompt (the prompt runs again from its
checkpoint, one record per prompt), and a driver SIGKILLed mid-batch then rerun (done prompts
skipped, the rest resumed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import EXEMPLAR_CLI_FAST
from sds3d.cli import main

pytest.importorskip("ray")

ROOT = Path(__file__).parents[1]
FAST = [*EXEMPLAR_CLI_FAST, "--steps", "3", "--checkpoint-every", "1"]


def driver(prompts: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "cli.py", "batch", str(prompts), *FAST, "--batch-dir", str(out), "--engine", "ray", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def wait_for(condition, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.2)


def lock_pid(run_dir: Path) -> int | None:
    """The pid training in a run folder (the run folder lock's file), if any."""
    try:
        return int((run_dir / ".lock").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def layout(batch_dir: Path) -> dict[str, set[str]]:
    return {d.name: {p.name for p in d.iterdir()} for d in sorted(batch_dir.iterdir()) if d.is_dir()}


def test_a_ray_batch_gives_the_same_folder_as_the_local_engine(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a snowman\na rubber duck | seed=3\na dragon\n")
    local, ray = tmp_path / "local", tmp_path / "ray"
    assert main(["batch", str(prompts), *FAST, "--batch-dir", str(local)]) == 1  # "a dragon" fails
    capsys.readouterr()
    p = driver(prompts, ray)
    output, _ = p.communicate(timeout=300)
    assert p.returncode == 1, output
    assert "ray: 2 worker(s)" in output or "ray: 1 worker(s)" in output
    assert layout(ray) == layout(local) and set(layout(ray)) == {"0000-a-snowman", "0001-a-rubber-duck", "0002-a-dragon"}
    status = lambda out: sorted((r["index"], r["prompt"], r["status"]) for r in records(out))  # noqa: E731
    assert status(ray) == status(local) == [(0, "a snowman", "done"), (1, "a rubber duck", "done"), (2, "a dragon", "failed")]
    assert all(r["attempts"] == 1 for r in records(ray))
    for name in ("0000-a-snowman", "0001-a-rubber-duck"):
        cfg = [json.loads((out / name / "config.json").read_text()) for out in (local, ray)]
        assert cfg[0] == cfg[1] and cfg[0]["config"]["recipe"] == "exemplar"
    page = (ray / "index.html").read_text()
    assert "3 prompts: 2 done, 1 failed" in page


def test_a_killed_worker_resumes_its_prompt_and_a_killed_driver_resumes_the_batch(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a snowman | steps=120 checkpoint_every=20\na traffic cone | steps=2\na penguin | steps=120 checkpoint_every=20\n")
    out = tmp_path / "batch"
    snowman, cone, penguin = out / "0000-a-snowman", out / "0001-a-traffic-cone", out / "0002-a-penguin"

    # 1. SIGKILL the worker process training the snowman once it has a checkpoint
    p = driver(prompts, out, "--cpus-per-run", str(len(os.sched_getaffinity(0))))  # one worker
    wait_for(lambda: (snowman / "checkpoint.pt").exists() and lock_pid(snowman) is not None)
    victim = lock_pid(snowman)
    os.kill(victim, signal.SIGKILL)
    output, _ = p.communicate(timeout=300)
    assert p.returncode == 0, output
    assert "worker died running 'a snowman'" in output
    recs = records(out)
    assert sorted(r["index"] for r in recs) == [0, 1, 2]  # exactly one final record per prompt
    assert all(r["status"] == "done" for r in recs)
    by_prompt = {r["prompt"]: r for r in recs}
    assert by_prompt["a snowman"]["attempts"] == 2 and by_prompt["a snowman"]["pid"] != victim
    summary = json.loads((snowman / "summary.json").read_text())
    assert summary["status"] == "done" and summary["resumed_from_step"] >= 20  # from its checkpoint, not step 0

    # 2. SIGKILL the driver mid-batch, then the same command again. A fresh batch whose long prompts
    # cannot finish between the kill and the death of their workers.
    prompts.write_text("a snowman | steps=600 checkpoint_every=20\na traffic cone | steps=2\na penguin | steps=600 checkpoint_every=20\n")
    out = tmp_path / "batch2"
    snowman, cone, penguin = out / "0000-a-snowman", out / "0001-a-traffic-cone", out / "0002-a-penguin"
    done = lambda run: (run / "summary.json").exists() and json.loads((run / "summary.json").read_text()).get("status") == "done"  # noqa: E731
    pending_with_checkpoint = lambda: [r for r in (snowman, penguin) if (r / "checkpoint.pt").exists() and not done(r)]  # noqa: E731
    p = driver(prompts, out)
    wait_for(lambda: done(cone) and pending_with_checkpoint())
    p.kill()
    p.communicate(timeout=60)
    pids = [pid for pid in map(lock_pid, (snowman, penguin)) if pid is not None]
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=60)  # its workers go with it
    interrupted = pending_with_checkpoint()
    assert interrupted, "both long prompts finished before their workers died"
    p = driver(prompts, out)
    output, _ = p.communicate(timeout=300)
    assert p.returncode == 0, output
    assert "skip (done): a traffic cone" in output
    final = {r["prompt"]: r for r in records(out)}
    assert sorted(r["index"] for r in records(out)).count(1) == 1  # the cone: one record, from its first driver
    assert all(r["status"] == "done" for r in final.values()) and set(final) == {"a snowman", "a traffic cone", "a penguin"}
    resumed = [json.loads((r / "summary.json").read_text()).get("resumed_from_step") for r in interrupted]
    assert all(step is not None and step >= 20 for step in resumed), resumed  # from their checkpoints, not step 0


def test_a_request_no_node_can_meet_is_one_line_at_once(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a snowman\n")
    t0 = time.monotonic()
    p = driver(prompts, tmp_path / "batch", "--gpus-per-run", "1")
    output, _ = p.communicate(timeout=120)
    assert p.returncode == 1
    errors = [line for line in output.splitlines() if line.startswith("sds3d: error:")]
    assert len(errors) == 1 and "no node of the Ray cluster can hold a worker with 1 CPU(s) and 1 GPU(s)" in errors[0]
    assert "Traceback" not in output and time.monotonic() - t0 < 100
