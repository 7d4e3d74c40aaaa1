"""``sds3d bench scale``: every guidance x scene at the real model size, end to end, as a user runs it.

Random-weight model folders with the published architectures (SD-2.1-base; MVDream
sd-v2.1-base-4view, whose VAE/text encoder are SD-2.1-base's) are written once into a cache
folder by :mod:`sds3d.bench.scale_models` and then loaded through the ordinary
``from_pretrained`` path. Each row is one ``sds3d generate`` **subprocess**:

    python -m sds3d.cli generate PROMPT --scene S --guidance G --prior SD_DIR --mvdream.model MV_DIR
        --mvdream.sd-model SD_DIR --steps 2 --batch-size B --device D --turntable-frames 8 [extra]

with B = 1, or 4 (the smallest batch) for the 4-view methods coupled and mvsds; export is on
(the default marching-cubes mesh). Reported per row, from the run's summary.json and the child
process's resource usage:

- ``s/step``: summary.json's ``step_seconds`` (the training loop's wall time / steps; model
  loading excluded, reported as ``load s``).
- ``peak RSS GiB``: the child's ``ru_maxrss`` from ``os.wait4`` on its pid: that process's own
  peak resident memory (models, activations, export), not the benchmark's.
- ``peak GPU GiB``: ``torch.cuda.max_memory_allocated`` over the training loop and export
  (summary.json's ``max_memory_mb``), CUDA only.
- ``export s``: summary.json's ``export_seconds`` (mesh extraction and writing).
- ``status``: ok, or the row's one-line error (the ``sds3d: error:`` line, the last line of a
  traceback, or the signal that killed it). One row failing does not stop the table; the JSON
  is rewritten after every row.

Rows run in the order given (default: the most informative first: sds, vsd and coupled on
Gaussians, then the rest).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sds3d.bench.scale_models import ensure_models
from sds3d.config import MULTI_VIEW_GUIDANCE, GuidanceName, SceneName

DEFAULT_ROWS: tuple[tuple[GuidanceName, SceneName], ...] = (
    ("sds", "gaussians"),
    ("vsd", "gaussians"),
    ("coupled", "gaussians"),
    ("nfsd", "gaussians"),
    ("csd", "gaussians"),
    ("mvsds", "gaussians"),
    ("sds", "nerf"),
    ("vsd", "nerf"),
    ("coupled", "nerf"),
    ("nfsd", "nerf"),
    ("csd", "nerf"),
    ("mvsds", "nerf"),
)


@dataclass(frozen=True)
class ScaleConfig:
    """Run every guidance x scene for 2 steps plus export at the real model size (random
    weights), one ``sds3d generate`` subprocess per row; print seconds per step, peak memory,
    export seconds and ok or the error."""

    guidance: tuple[GuidanceName, ...] = ("sds", "vsd", "coupled", "nfsd", "csd", "mvsds")
    """Guidance methods (rows are ordered scene-major, Gaussians first, in this order)."""
    scene: tuple[SceneName, ...] = ("gaussians", "nerf")
    """Scene types."""
    arch: Literal["real", "tiny"] = "real"
    """real: SD-2.1-base and MVDream sd-v2.1-base-4view architectures (8.1 GB of fp32 weights
    on disk, built once, about 2 minutes); tiny: the test pipeline's shapes (seconds)."""
    device: str = "cpu"
    """Device of every run (cpu, cuda, auto ...)."""
    steps: int = 2
    """Training steps per row."""
    out_dir: Path = Path("outputs/bench-scale")
    """Run folders (runs/G-S/), logs (logs/G-S.log) and scale.json."""
    cache_dir: Path = Path("~/.cache/sds3d/scale")
    """Where the random-weight model folders are built and reused (cache_dir/sd21, cache_dir/tiny)."""
    memory_limit_gib: float | None = None
    """Passed to each run as --memory-limit-gib (its memory guard compares its estimate with
    this); default: each run's guard reads the memory available when it starts."""
    resolution: int | None = None
    """Render size of every row (default: each recipe's: 512 for Gaussians, 64 then 256 for NeRF)."""
    turntable_frames: int = 8
    """Turntable frames each run renders before the export (the default 60 is minutes on CPU)."""
    timeout_s: float = 3600.0
    """A row still running after this many seconds is killed and reported as such."""
    prompt: str = "a DSLR photo of a corgi"
    """The prompt of every row."""
    extra: str = ""
    """More generate options appended to every row, one shell-quoted string
    (e.g. --extra="--export.resolution 128"; the = keeps it one value)."""


def _rows(cfg: ScaleConfig) -> list[tuple[str, str]]:
    order = {r: i for i, r in enumerate(DEFAULT_ROWS)}
    rows = [(g, s) for s in cfg.scene for g in cfg.guidance]
    if cfg.guidance == ScaleConfig.guidance and cfg.scene == ScaleConfig.scene:
        rows.sort(key=lambda r: order[r])
    return rows


def row_command(cfg: ScaleConfig, guidance: str, scene: str, sd_dir: Path, mv_dir: Path) -> list[str]:
    """The ``sds3d generate`` command line of one row."""
    batch = 4 if guidance in MULTI_VIEW_GUIDANCE else 1
    cmd = [sys.executable, "-m", "sds3d.cli", "generate", cfg.prompt, "--scene", scene, "--guidance", guidance,
           "--prior", str(sd_dir), "--mvdream.model", str(mv_dir), "--mvdream.sd-model", str(sd_dir),
           "--steps", str(cfg.steps), "--batch-size", str(batch), "--device", cfg.device,
           "--output-dir", str(cfg.out_dir / "runs" / f"{guidance}-{scene}"),
           "--turntable-frames", str(cfg.turntable_frames), "--preview-every", "0"]
    if cfg.resolution is not None:
        cmd += ["--resolution", str(cfg.resolution)]
    if cfg.arch == "tiny":  # MVDream's 256 px through the tiny VAE (factor 2) would be 128x128 latents
        cmd += ["--mvdream.image-size", "16"]
    if cfg.memory_limit_gib is not None:
        cmd += ["--memory-limit-gib", str(cfg.memory_limit_gib)]
    return cmd + shlex.split(cfg.extra)


def run_child(cmd: list[str], log_path: Path, timeout_s: float, env: dict[str, str]) -> tuple[int, float, bool]:
    """(return code, peak RSS in bytes of that child, timed out): stdout+stderr go to ``log_path``;
    the peak comes from ``os.wait4`` on the child's pid (its own ru_maxrss, in KiB on Linux)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C or SIGTERM of the benchmark: the row's process group goes too
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            raise
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    return proc.returncode, usage.ru_maxrss * 1024, timed_out.is_set()


def error_line(log_text: str, rc: int, timed_out: bool, timeout_s: float) -> str:
    """The one-line error of a failed row."""
    if timed_out:
        return f"killed after the {timeout_s:.0f} s row timeout"
    lines = [ln.strip() for ln in log_text.replace("\r", "\n").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("sds3d: error:"):
            return ln.removeprefix("sds3d: error:").strip()
    if rc < 0:
        name = signal.Signals(-rc).name
        return f"killed by {name}" + (" (out of memory: the kernel's OOM killer?)" if -rc == signal.SIGKILL else "")
    return lines[-1][:300] if lines else f"exit code {rc}, no output"


def run_row(cfg: ScaleConfig, guidance: str, scene: str, sd_dir: Path, mv_dir: Path) -> dict[str, Any]:
    """One row: run generate, read its summary.json; never raises for a failed run."""
    cmd = row_command(cfg, guidance, scene, sd_dir, mv_dir)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if p)
    log_path = cfg.out_dir / "logs" / f"{guidance}-{scene}.log"
    run_parent = cfg.out_dir / "runs" / f"{guidance}-{scene}"
    shutil.rmtree(run_parent, ignore_errors=True)  # this row's summary.json is the only one there
    t0 = time.perf_counter()
    rc, peak_rss, timed_out = run_child(cmd, log_path, cfg.timeout_s, env)
    row: dict[str, Any] = {
        "guidance": guidance,
        "scene": scene,
        "batch_size": 4 if guidance in MULTI_VIEW_GUIDANCE else 1,
        "wall_seconds": time.perf_counter() - t0,
        "peak_rss_gib": peak_rss / 2**30,
        "returncode": rc,
        "command": cmd,
        "log": str(log_path),
    }
    summaries = sorted(run_parent.glob("*/summary.json"))
    summary = json.loads(summaries[-1].read_text()) if summaries else {}
    for key in ("load_seconds", "step_seconds", "export_seconds", "turntable_seconds", "max_memory_mb"):
        if key in summary:
            row[key] = summary[key]
    if "mesh" in summary:
        row["mesh_pieces"] = summary["mesh"].get("pieces")
    ok = rc == 0 and summary.get("status") == "done"
    row["status"] = "ok" if ok else error_line(log_path.read_text(errors="replace"), rc, timed_out, cfg.timeout_s)
    return row


def _fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def format_table(rows: list[dict[str, Any]], cuda: bool) -> str:
    head = ["guidance", "scene", "batch", "load s", "s/step", "peak RSS GiB"] + (["peak GPU GiB"] if cuda else []) + ["export s", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        gpu = [_fmt(r.get("max_memory_mb") and r["max_memory_mb"] / 1024, ".2f")] if cuda else []
        cells = [r["guidance"], r["scene"], str(r["batch_size"]), _fmt(r.get("load_seconds"), ".1f"), _fmt(r.get("step_seconds"), ".1f"),
                 _fmt(r["peak_rss_gib"], ".2f")] + gpu + [_fmt(r.get("export_seconds"), ".1f"), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_scale_bench(cfg: ScaleConfig, log: Any = print) -> list[dict[str, Any]]:
    """Build/reuse the model folders, run every row, print the table; returns the rows."""
    arch = "sd21" if cfg.arch == "real" else "tiny"
    sd_dir, mv_dir, params = ensure_models(cfg.cache_dir, arch, log=log)
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}, "params": params,
            "host": platform.node(), "python": sys.version.split()[0], "started": datetime.now().isoformat(timespec="seconds")}
    rows: list[dict[str, Any]] = []
    cuda = cfg.device.startswith("cuda")
    if threading.current_thread() is threading.main_thread():  # SIGTERM (a timeout) stops the row too
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    for guidance, scene in _rows(cfg):
        log(f"[scale] {guidance} x {scene} ...")
        row = run_row(cfg, guidance, scene, sd_dir, mv_dir)
        rows.append(row)
        log(f"[scale] {guidance} x {scene}: {row['status']} (step {_fmt(row.get('step_seconds'), '.1f')} s, "
            f"peak RSS {row['peak_rss_gib']:.2f} GiB, wall {row['wall_seconds']:.0f} s)")
        (cfg.out_dir / "scale.json").write_text(json.dumps({**meta, "rows": rows}, indent=2))
    log(format_table(rows, cuda))
    return rows
