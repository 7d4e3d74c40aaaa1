"""Batch engine benchmark: the same prompt file through ``--engine local`` and ``--engine ray``.

Each engine runs ``sds3d batch FILE`` as a user would (a fresh subprocess, a fresh batch
folder), timed from outside. The local engine runs its prompts one after another with every
thread torch may use; the Ray engine starts a local instance sized to the machine and runs one
worker per ``--cpus-per-run`` CPUs, each prompt with that many threads. The table reports the
wall clock, prompts per minute, the median per-prompt wall time recorded in ``manifest.jsonl``,
and the engine's fixed cost: wall - (sum of per-prompt times) / workers, which for Ray is the
cluster start, the workers' imports and the shutdown.

    sds3d bench batch [--prompts prompts/exemplar.txt] [--steps N] [--engines local ray]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class BatchBenchConfig:
    """Time one prompt file under each batch engine, in this run, on this machine."""

    prompts: Path = Path("prompts/exemplar.txt")
    """Prompt file to run (its lines' own options apply)."""
    engines: tuple[Literal["local", "ray"], ...] = ("local", "ray")
    """Engines to time, in this order."""
    steps: int | None = None
    """Steps per prompt (default: the recipe's)."""
    cpus_per_run: int = 1
    """Ray workers' CPUs each (workers = usable CPUs / this)."""
    prior: str = "exemplar"
    """--prior of every prompt."""
    output_dir: Path = Path("outputs/bench-batch")
    """Parent of the batch folders (emptied per engine first) and of results.json."""
    extra: tuple[str, ...] = ()
    """More `sds3d batch` options, e.g. --extra --export.resolution 96."""


@dataclass
class EngineResult:
    engine: str
    wall_s: float
    done: int
    failed: int
    workers: int
    prompt_s: list[float] = field(default_factory=list)

    @property
    def fixed_s(self) -> float:
        return self.wall_s - sum(self.prompt_s) / max(1, self.workers)


def _run_engine(cfg: BatchBenchConfig, engine: str) -> EngineResult:
    batch_dir = cfg.output_dir / f"batch-{engine}"
    shutil.rmtree(batch_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "sds3d.cli", "batch", str(cfg.prompts), "--prior", cfg.prior, "--device", "cpu",
           "--batch-dir", str(batch_dir), "--engine", engine, *cfg.extra]
    if cfg.steps is not None:
        cmd += ["--steps", str(cfg.steps)]
    if engine == "ray":
        cmd += ["--cpus-per-run", str(cfg.cpus_per_run)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"sds3d bench batch: the {engine} engine exited {proc.returncode}: {tail[0]}")
    records = [json.loads(l) for l in (batch_dir / "manifest.jsonl").read_text().splitlines() if l.strip()]
    workers = 1
    for line in proc.stdout.splitlines():
        if line.startswith("ray: ") and "worker(s)" in line:
            workers = int(line.split()[1])
    return EngineResult(engine, wall, sum(r["status"] == "done" for r in records), sum(r["status"] == "failed" for r in records),
                        workers, [float(r.get("seconds") or 0.0) for r in records if r["status"] == "done"])


def run_batch_bench(cfg: BatchBenchConfig) -> list[EngineResult]:
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0))
    print(f"{cfg.prompts} on {cpus} usable CPU(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    results = [_run_engine(cfg, e) for e in cfg.engines]
    base = results[0].wall_s
    print(f"{'engine':<7} {'workers':>7} {'done':>5} {'failed':>6} {'wall s':>8} {'prompts/min':>11} {'median prompt s':>15} {'fixed s':>8} {'speed-up':>8}")
    for r in results:
        med = statistics.median(r.prompt_s) if r.prompt_s else float("nan")
        print(f"{r.engine:<7} {r.workers:>7} {r.done:>5} {r.failed:>6} {r.wall_s:>8.1f} {60 * r.done / r.wall_s:>11.2f} {med:>15.1f} {r.fixed_s:>8.1f} {base / r.wall_s:>7.2f}x")
    (cfg.output_dir / "results.json").write_text(json.dumps(
        [{"engine": r.engine, "workers": r.workers, "done": r.done, "failed": r.failed, "wall_s": r.wall_s,
          "prompt_s": r.prompt_s, "fixed_s": r.fixed_s} for r in results], indent=1))
    return results
