"""The training loop: one prompt -> a run folder with a scene, previews, turntable and mesh.

One step (docs/design.md):

    cams = sample_cameras(...)                 # random orbit views (groups of 4 for MV priors)
    out = scene.render(cams, background)
    g = guidance(out.rgb, cams, step, steps, background)  # loss whose gradient w.r.t. x is g / B
    (g.loss + scene.regularization(out)).backward(); scene.optimizer_step(step, out)

Run folder ``OUTPUT_DIR/<slug>-<YYYYmmdd-HHMMSS>/``: config.json, metrics.jsonl, previews/,
checkpoint.pt, turntable.mp4 (.gif without ffmpeg), mesh files, summary.json.
"""

from __future__ import annotations

import json
import math
import random
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from sds3d.cameras import eval_cameras, sample_cameras
from sds3d.checkpoint import load_checkpoint, load_into, require_entries, save_checkpoint, write_json_atomic
from sds3d.config import RunConfig, save_config
from sds3d.threads import configure_threads
from sds3d.timing import Phases, startup_seconds
from sds3d.factory import build_guidance, build_prompts, build_scene, load_priors, precompute_prompts
from sds3d.memory import check_memory
from sds3d.schedule import reached
from sds3d.types import Guidance, GuidanceOutput, Prior, Scene, SDS3DError, render_views

CHECKPOINT = "checkpoint.pt"


class RunInterrupted(SDS3DError):
    """Ctrl-C or SIGTERM: the checkpoint was written; resume with --resume RUN_DIR."""


class TrainingDiverged(SDS3DError):
    """NaN/Inf in the loss or the parameters: the last good checkpoint is kept."""


@dataclass
class RunResult:
    run_dir: Path
    scene: Scene
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def slugify(prompt: str, max_len: int = 48) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "run"


def make_run_dir(output_dir: Path, prompt: str) -> Path:
    """A new folder ``<slug>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3`` ... if taken); never reuses one."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{slugify(prompt)}-{stamp}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        for i in range(1, 1000):
            path = output_dir / (base if i == 1 else f"{base}-{i}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as e:
        raise SDS3DError(f"cannot create a run folder in {output_dir}: {e.strerror}; pass a writable --output-dir") from None
    raise SDS3DError(f"too many runs named {base} in {output_dir}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(cam_gen: torch.Generator) -> dict[str, Any]:
    """Every random stream of the run, as tensors and plain values (a checkpoint holds no code)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
        "cameras": cam_gen.get_state(),
    }


def set_rng_state(state: dict[str, Any], cam_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"].cpu().numpy().astype(np.uint32)
        numpy_state = (numpy_state["name"], keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)  # older checkpoints: numpy's own tuple
    random.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in state["python"]))
    cam_gen.set_state(state["cameras"].cpu())


def training_background(cfg: RunConfig, step: int, batch: int, device: torch.device) -> torch.Tensor:
    """[batch, 3] background colours of training step ``step``: white, black, or (random, and auto)
    white for the first ``cfg.white_start`` of the run, then for each image a random colour with
    chance ``cfg.random_background_p``, else white. The colours are drawn from (seed, step) alone,
    so they leave the camera stream alone (a run with a white start sees the same cameras as one
    on white throughout) and a resumed run draws the same."""
    if cfg.background == "black":
        return torch.zeros(batch, 3, device=device)
    if cfg.background == "white" or not reached(step, cfg.steps, cfg.white_start):
        return torch.ones(batch, 3, device=device)
    gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) % 2**63)
    colours = torch.rand(batch, 3, generator=gen)
    random = torch.rand(batch, 1, generator=gen) < cfg.random_background_p
    return torch.where(random, colours, torch.ones_like(colours)).to(device)


def train_step(scene: Scene, guidance: Guidance, cfg: RunConfig, step: int, cam_gen: torch.Generator, device: torch.device) -> tuple[GuidanceOutput, torch.Tensor, int]:
    """One training step (docs/design.md, One run): sample cameras, render, guidance,
    regularization, backward, optimizer step. Returns the guidance output, the loss and the
    render resolution."""
    res = cfg.resolution_at(step)
    cams = sample_cameras(cfg.cameras, cfg.batch_size, res, res, cfg.num_views, generator=cam_gen, device=device)
    background = training_background(cfg, step, cfg.batch_size, device)
    out = scene.render(cams, background)
    scene.pre_backward(step, out)
    g = guidance(out.rgb, cams, step, cfg.steps, background)
    loss = g.loss + scene.regularization(out, step, cfg.steps)
    loss.backward()
    scene.optimizer_step(step, out)
    return g, loss, res


@contextmanager
def stop_signals() -> Iterator[dict[str, int]]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps."""
    flag: dict[str, int] = {}
    if threading.current_thread() is threading.main_thread():
        def handler(signum: int, _frame: Any) -> None:
            flag["signal"] = signum

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield flag
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    else:
        yield flag


def orbit_views(scene: Scene, cfg: RunConfig, n: int, size: int, device: torch.device) -> torch.Tensor:
    """[n,H,W,3] evaluation renders on white (CPU), azimuths evenly spaced from the front."""
    cams = eval_cameras(cfg.cameras, n, size, size, device)
    return render_views(scene, cams, device).rgb.clamp(0, 1)


def save_preview(scene: Scene, cfg: RunConfig, path: Path, device: torch.device) -> None:
    from PIL import Image

    views = orbit_views(scene, cfg, 4, max(cfg.turntable_resolution // 2, 64), device)
    grid = torch.cat(list(views), dim=1)  # front | side | back | side, left to right
    path.parent.mkdir(exist_ok=True)
    Image.fromarray((grid.numpy() * 255).round().astype(np.uint8)).save(path)


def generate(
    prompt: str,
    cfg: RunConfig,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    priors: tuple[Prior | None, Prior | None] | None = None,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Train one scene for ``prompt``; write everything into a run folder and return it.

    ``resume=True`` continues ``run_dir`` from its checkpoint. ``priors`` lets a batch share
    loaded models across prompts. ``should_stop`` is asked between steps (besides SIGINT/SIGTERM):
    when it says yes, the run checkpoints and raises :class:`RunInterrupted`.
    """
    startup = startup_seconds()
    phases = Phases()
    cfg.validate()
    prompts = build_prompts(prompt, cfg)
    device = cfg.resolve_device()
    if priors is None:  # before the models load: one line when they cannot fit
        check_memory(cfg, device)
    if run_dir is None:
        run_dir = make_run_dir(cfg.output_dir, prompt)
    if not resume:
        save_config(cfg, prompt, run_dir / "config.json")
    threads, threads_rule = configure_threads(cfg.threads)
    summary: dict[str, Any] = {
        "prompt": prompt,
        "recipe": cfg.recipe,
        "guidance": cfg.guidance,
        "scene": cfg.scene,
        "prior": cfg.prior,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "device": str(device),
        "threads": threads,
        "threads_rule": threads_rule,
        "run_dir": str(run_dir),
        "status": "running",
    }
    if startup is not None:
        summary["startup_seconds"] = startup
    phases.mark("setup")
    try:
        try:
            result = _train(prompt, prompts, cfg, device, run_dir, resume, priors, progress, summary, phases, should_stop)
        except torch.cuda.OutOfMemoryError:
            raise SDS3DError(
                f"out of GPU memory on {device}; lower --batch-size or --resolution, use --nerf.ray-chunk "
                "smaller, --diffusers.tiny-vae, or put the multi-view prior on another GPU with --mv-device"
            ) from None
    except RunInterrupted as e:
        _record_end(run_dir, summary, "interrupted", str(e), phases)
        raise
    except Exception as e:  # noqa: BLE001 - recorded, then re-raised
        _record_end(run_dir, summary, "failed", f"{type(e).__name__}: {e}", phases)
        raise
    return result


def _record_end(run_dir: Path, summary: dict[str, Any], status: str, error: str, phases: Phases) -> None:
    """Write summary.json for a run that did not finish; never hides the original error."""
    phases.mark("stopped")
    summary.update(status=status, error=error, seconds=phases.total(), phases=dict(phases.seconds))
    try:
        write_json_atomic(run_dir / "summary.json", summary)
    except SDS3DError as e:
        print(f"sds3d: warning: {e}", file=sys.stderr)


def _train(prompt, prompts, cfg: RunConfig, device, run_dir: Path, resume: bool, priors, progress: bool, summary, phases: Phases, should_stop=None) -> RunResult:
    if priors is None:
        priors = load_priors(cfg, device)
        precompute_prompts(priors, [prompts])
    phases.mark("load")
    summary["load_seconds"] = phases.seconds["load"]
    prior_2d, prior_mv = priors
    seed_everything(cfg.seed)
    guidance = build_guidance(cfg, prompts, prior_2d, prior_mv)
    scene = build_scene(cfg, device)
    summary["backend"] = getattr(scene, "backend", None)  # gsplat / nerfacc kernels, or torch (also the CUDA fallback)
    cam_gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    ckpt_path = run_dir / CHECKPOINT
    if resume:
        ckpt = load_checkpoint(ckpt_path, device)
        require_entries(ckpt, ckpt_path, {"step": int, "scene": dict, "guidance": dict, "rng": dict})
        load_into(scene, ckpt["scene"], ckpt_path, "scene")
        load_into(guidance, ckpt["guidance"], ckpt_path, "guidance")
        try:
            set_rng_state(ckpt["rng"], cam_gen)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise SDS3DError(f"checkpoint {ckpt_path}: its random state is damaged ({type(e).__name__}: {e}); start the run again") from None
        start = int(ckpt["step"])
        summary["resumed_from_step"] = start

    def checkpoint(step: int) -> None:
        save_checkpoint(
            ckpt_path,
            {"step": step, "scene": scene.state_dict(), "guidance": guidance.state_dict(), "rng": rng_state(cam_gen)},
        )

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_loop = phases.mark("build")
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress, desc="sds3d", unit="step", dynamic_ncols=True)
    t_step, step_at_log = time.perf_counter(), start
    with (run_dir / "metrics.jsonl").open("a" if resume else "w") as metrics, stop_signals() as stop:
        for step in bar:
            if stop or (should_stop is not None and should_stop()):
                check_finite(scene, step - 1, run_dir)  # never replace a good checkpoint with NaNs
                checkpoint(step)
                why = f"by signal {stop['signal']}" if stop else "on request"
                raise RunInterrupted(f"stopped {why} at step {step}; checkpoint saved: resume with sds3d generate --resume {run_dir}")
            g, loss, res = train_step(scene, guidance, cfg, step, cam_gen, device)

            last = step + 1 == cfg.steps
            if (cfg.log_every and (step + 1) % cfg.log_every == 0) or last:
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"NaN/Inf loss ({loss_value}) at step {step}; the last good checkpoint in {run_dir} is kept. "
                        "Lower the learning rates or the guidance scale, or enable gradient clipping"
                    )
                now = time.perf_counter()
                record = {
                    "step": step + 1,
                    "loss": loss_value,
                    "t": float(g.t.float().mean()),
                    "num_primitives": scene.num_primitives(),
                    "resolution": res,
                    "seconds": now - phases.start,
                    "seconds_per_step": (now - t_step) / (step + 1 - step_at_log),  # the steps run since the last record
                }
                record.update({k: float(v) for k, v in g.logs.items()})
                if device.type == "cuda":
                    record["max_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                bar.set_postfix(loss=f"{loss_value:.4g}", n=record["num_primitives"])
                t_step, step_at_log = now, step + 1
            if cfg.preview_every and (step + 1) % cfg.preview_every == 0:
                save_preview(scene, cfg, run_dir / "previews" / f"step_{step + 1:06d}.png", device)
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and not last:
                check_finite(scene, step, run_dir)
                checkpoint(step + 1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    summary["step_seconds"] = (phases.mark("train") - t_loop) / max(cfg.steps - start, 1)
    check_finite(scene, cfg.steps - 1, run_dir)
    checkpoint(cfg.steps)
    phases.mark("checkpoint")
    return finish(prompt, cfg, scene, device, run_dir, summary, phases)


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory (MB, ru_maxrss) and, on CUDA, the peak memory torch
    allocated on ``device`` since the training loop began (weights included)."""
    import resource

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["max_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def check_finite(scene: Scene, step: int, run_dir: Path) -> None:
    """Refuse to checkpoint or export a scene with NaN/Inf parameters."""
    for name, v in _tensors(scene.state_dict()):
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise TrainingDiverged(
                f"NaN/Inf in scene parameter {name} at step {step}; the last good checkpoint in {run_dir} is kept. "
                "Lower the learning rates or the guidance scale, or enable gradient clipping"
            )


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("optimizers", "optimizer", "optim"):
                continue  # optimizer moments are not the scene
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))


def finish(prompt: str, cfg: RunConfig, scene: Scene, device, run_dir: Path, summary: dict, phases: Phases) -> RunResult:
    """Preview, turntable, mesh export and summary.json after the last step."""
    from sds3d.export import export_scene
    from sds3d.export.turntable import write_video

    train_seconds = phases.total()  # to the final checkpoint
    save_preview(scene, cfg, run_dir / "previews" / "final.png", device)
    frames = orbit_views(scene, cfg, cfg.turntable_frames, cfg.turntable_resolution, device)
    files = [write_video(frames, run_dir / "turntable.mp4")]
    phases.mark("turntable")
    exported = export_scene(scene, run_dir, cfg.export, cfg.cameras, device)
    files += list(exported.paths)
    summary.update(peak_memory(device))
    phases.mark("export")
    summary.update(
        turntable_seconds=phases.seconds["turntable"],
        export_seconds=phases.seconds["export"],
        status="done",
        train_seconds=train_seconds,
        seconds=phases.total(),
        phases=dict(phases.seconds),
        num_primitives=scene.num_primitives(),
        files=sorted(str(Path(f).relative_to(run_dir)) for f in files),
        mesh=exported.summary(),
    )
    write_json_atomic(run_dir / "summary.json", summary)
    return RunResult(run_dir=run_dir, scene=scene, seconds=summary["seconds"], summary=summary)
