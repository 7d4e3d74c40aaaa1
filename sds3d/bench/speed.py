"""``sds3d bench speed``: the time of one training step against the UNet floor and the FLOP floor.

For each guidance method x scene type, the benchmark builds the real pieces (scene config's
``setup``, ``sample_cameras``, the guidance config's ``setup`` on a Stable Diffusion prior with
random weights of the published SD-2.1-base architecture, :mod:`sds3d.priors.archs`) and times
exactly the step of :mod:`sds3d.train`:

    render (+ pre_backward) -> guidance(rgb, cams, step, steps, background) + regularization -> backward
    -> scene.optimizer_step

Reported per row, after ``warmup`` steps, as the median of ``iters`` steps:

- ``step ms``: plain steps, one device synchronisation at the end of each (no other syncs).
- breakdown: a second set of ``iters`` steps with phase timers (render forward, VAE encode,
  UNet calls, backward, optimizer/strategy; ``other`` is the rest: camera sampling, noise,
  guidance arithmetic, regularizers, Python). The prior's ``encode_images`` and
  ``unet_forward`` (or ``predict_noise``) are wrapped by timing functions; on CUDA every timer
  edge synchronises the device, so the breakdown is of a slightly slower step. The columns
  are the step whose total is the (lower) median, so they add up to its ``inst ms``.
- ``floor ms``: the UNet calls of one step replayed alone (same inputs, batch and dtype, no
  grad); ``step/floor`` is what the rest of the step costs on top of the diffusion model.
- ``flop-floor ms``: FLOPs of one full step (``torch.utils.flop_counter.FlopCounterMode``:
  matmuls, convolutions, attention; custom CUDA kernels such as gsplat's count 0) divided by
  the measured rate of a large square matmul in the UNet's dtype on this device.
- ``peak MB``: ``torch.cuda.max_memory_allocated`` over the row (weights included); n/a on
  CPU, where the JSON records the process's peak RSS instead.

The measuring tools (phase timer, prior instrumentation, UNet replay, FLOP count, matmul
rate) are in :mod:`sds3d.bench.timing`; this module holds the options, the step, the rows and
the table.
"""

from __future__ import annotations

import gc
import json
import platform
import resource
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import torch

from sds3d.bench.timing import PhaseTimer, count_flops, instrument, matmul_tflops, replay_seconds
from sds3d.cameras import CameraConfig, sample_cameras
from sds3d.config import resolve_device
from sds3d.priors.archs import build_mvdream_prior, build_sd_prior
from sds3d.prompts import PromptSet
from sds3d.scenes.gaussians import GaussiansConfig
from sds3d.scenes.nerf import NerfConfig
from sds3d.types import Guidance, Scene, SDS3DError

GuidanceName = Literal["sds", "nfsd", "csd", "vsd", "coupled", "mvsds"]
SceneName = Literal["gaussians", "nerf"]
PHASES = ("render", "vae", "unet", "backward", "optim")
MULTI_VIEW = ("coupled", "mvsds")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class SpeedConfig:
    """Time one training step per guidance method and scene at real model scale (random weights)."""

    arch: Literal["auto", "tiny", "sd21"] = "auto"
    """Model size: sd21 = the SD-2.1-base UNet/VAE (and MVDream's 4-view UNet), tiny = the
    test pipeline's size; auto = sd21 on CUDA, tiny on CPU."""
    device: str = "auto"
    """Torch device: auto (cuda if present, else cpu), cpu, cuda, cuda:1 ..."""
    guidance: tuple[GuidanceName, ...] = ("sds", "nfsd", "csd", "coupled", "mvsds", "vsd")
    """Guidance methods to time (vsd runs last: its LoRA adapter stays on the shared UNet)."""
    scene: tuple[SceneName, ...] = ("gaussians", "nerf")
    """Scene types to time."""
    resolution: int | None = None
    """Render size; default 512 for Gaussians and 64 for NeRF with sd21 (the default recipes'
    first stage), 64 with tiny."""
    batch_size: int = 4
    """Cameras per step (a multiple of 4 for coupled/mvsds)."""
    warmup: int = 3
    """Untimed steps first (kernel selection, allocator, torch.compile)."""
    iters: int = 10
    """Timed steps; the median is reported."""
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    """Precision of the diffusion models: auto = fp16 on CUDA (as a real run loads them), fp32 on CPU."""
    compile: bool = False
    """torch.compile the UNet (the first warm-up steps compile)."""
    channels_last: bool = False
    """Channels-last weights for the UNet and VAE."""
    tiny_vae: bool = False
    """Encode renders with a TAESD-size tiny autoencoder instead of the full VAE encoder."""
    steps: int = 1200
    """Length of the run the schedules assume (timestep annealing, regularizer weights)."""
    start_step: int = 0
    """Step index of the first benchmark step (schedules such as densification depend on it)."""
    prompt: str = "a hamburger"
    """Prompt text (embeddings are random; only the number of distinct prompts matters)."""
    seed: int = 0
    """Random seed for weights, scenes and cameras."""
    json_out: Path | None = None
    """Also write the results as JSON to this file."""
    gaussians: GaussiansConfig = GaussiansConfig()
    """The Gaussian scene's options (defaults: the default recipe's)."""
    nerf: NerfConfig = NerfConfig()
    """The NeRF scene's options (defaults: the default recipe's)."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.iters <= 0 or self.warmup < 0:
            raise SDS3DError("--batch-size and --iters must be positive and --warmup >= 0")
        if self.resolution is not None and (self.resolution <= 0 or self.resolution % 8):
            raise SDS3DError(f"--resolution must be a positive multiple of 8 (got {self.resolution})")


# ---------------------------------------------------------------------- one benchmark row


def build_guidance(name: str, prior_2d: Any, prior_mv: Any, prompts: PromptSet) -> Guidance:
    """The method's default config, set up on the given priors (imports are lazy)."""
    if name == "sds":
        from sds3d.guidance.sds import SDSConfig

        return SDSConfig().setup(prior_2d, prompts)
    if name == "nfsd":
        from sds3d.guidance.nfsd import NFSDConfig

        return NFSDConfig().setup(prior_2d, prompts)
    if name == "csd":
        from sds3d.guidance.csd import CSDConfig

        return CSDConfig().setup(prior_2d, prompts)
    if name == "vsd":
        from sds3d.guidance.vsd import VSDConfig

        return VSDConfig().setup(prior_2d, prompts)
    if name == "coupled":
        from sds3d.guidance.coupled import CoupledConfig

        return CoupledConfig().setup(prior_2d, prior_mv, prompts)
    if name == "mvsds":
        from sds3d.guidance.mvsds import MVSDSConfig

        return MVSDSConfig().setup(prior_mv, prompts)
    raise ValueError(f"unknown guidance {name!r}")


def build_scene(name: str, cfg: SpeedConfig, device: torch.device) -> Scene:
    if name == "gaussians":
        return cfg.gaussians.setup(device)
    if name == "nerf":
        return cfg.nerf.setup(device)
    raise ValueError(f"unknown scene {name!r}")


@dataclass
class Step:
    """Everything one training step needs (mirrors the loop of :mod:`sds3d.train`)."""

    scene: Scene
    guidance: Guidance
    cfg: SpeedConfig
    resolution: int
    num_views: int
    device: torch.device
    generator: torch.Generator
    timer: PhaseTimer

    def __call__(self, step: int) -> None:
        cfg, timer, B = self.cfg, self.timer, self.cfg.batch_size
        cams = sample_cameras(
            CameraConfig(), B, self.resolution, self.resolution, self.num_views, generator=self.generator, device=self.device
        )
        background = torch.rand(B, 3, generator=self.generator).to(self.device)
        with timer.phase("render"):
            out = self.scene.render(cams, background)
            self.scene.pre_backward(step, out)
        g = self.guidance(out.rgb, cams, step, cfg.steps, background)
        loss = g.loss + self.scene.regularization(out, step, cfg.steps)
        with timer.phase("backward"):
            loss.backward()
        with timer.phase("optim"):
            self.scene.optimizer_step(step, out)

    def timed(self, step: int) -> dict[str, float]:
        """Seconds of one step (and of its phases when the timer is enabled)."""
        self.timer.times = {}
        self.timer.sync()
        t0 = time.perf_counter()
        self(step)
        self.timer.sync()
        return {"step": time.perf_counter() - t0, **self.timer.times}


def bench_row(cfg: SpeedConfig, guidance_name: str, scene_name: str, priors: tuple[Any, Any], resolution: int, device: torch.device, rate: float) -> dict[str, Any]:
    """Time one guidance x scene pair; returns the row (milliseconds)."""
    torch.manual_seed(cfg.seed)
    multi_view = guidance_name in MULTI_VIEW
    if multi_view and cfg.batch_size % 4:
        raise SDS3DError(f"--guidance {guidance_name} renders groups of 4 views: use a --batch-size multiple of 4")
    guidance = build_guidance(guidance_name, priors[0], priors[1], PromptSet(cfg.prompt))
    scene = build_scene(scene_name, cfg, device)
    timer = PhaseTimer(device)
    step = Step(scene, guidance, cfg, resolution, 4 if multi_view else 1, device, torch.Generator().manual_seed(cfg.seed), timer)
    used = [p for p in priors if p is not None]
    undo = [instrument(p, timer) for p in used]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        s = cfg.start_step
        for _ in range(cfg.warmup):
            step(s)
            s += 1
        plain = [step.timed(s + i)["step"] for i in range(cfg.iters)]
        s += cfg.iters
        timer.enabled = True
        inst = []
        for i in range(cfg.iters):
            timer.calls = [] if i == cfg.iters - 1 else None
            inst.append(step.timed(s + i))
        s += cfg.iters
        calls, timer.calls, timer.enabled = timer.calls or [], None, False
        replay_seconds(calls, timer)  # warm
        floor = statistics.median(replay_seconds(calls, timer) for _ in range(cfg.iters))
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        flops = count_flops(lambda: step(s))
    finally:
        for u in undo:
            u()
    ms = 1e3
    mid = sorted(inst, key=lambda d: d["step"])[(len(inst) - 1) // 2]  # the lower-median step
    phases = {p: mid.get(p, 0.0) * ms for p in PHASES}
    step_ms = statistics.median(plain) * ms
    return {
        "guidance": guidance_name,
        "scene": scene_name,
        "resolution": resolution,
        "batch_size": cfg.batch_size,
        "step_ms": step_ms,
        "instrumented_ms": mid["step"] * ms,
        **{f"{p}_ms": v for p, v in phases.items()},
        "other_ms": mid["step"] * ms - sum(phases.values()),
        "unet_calls": len(calls),
        "floor_ms": floor * ms,
        "step_over_floor": step_ms / (floor * ms) if floor > 0 else float("inf"),
        "gflop": flops / 1e9,
        "flop_floor_ms": flops / (rate * 1e12) * ms,
        "peak_mb": peak_mb,
        "step_ms_all": [t * ms for t in plain],
        "phase_medians_ms": {p: statistics.median(d.get(p, 0.0) for d in inst) * ms for p in ("step",) + PHASES},
    }


# ---------------------------------------------------------------------- the benchmark


def resolve(cfg: SpeedConfig) -> tuple[torch.device, str, torch.dtype]:
    device = resolve_device(cfg.device)
    arch = cfg.arch if cfg.arch != "auto" else ("sd21" if device.type == "cuda" else "tiny")
    if cfg.dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = DTYPES[cfg.dtype]
    if dtype == torch.float16 and device.type != "cuda":
        raise SDS3DError("--dtype fp16 needs a CUDA device: use --dtype fp32 or bf16 on the CPU")
    return device, arch, dtype


def default_resolution(arch: str, scene: str) -> int:
    if arch == "tiny":
        return 64
    return 512 if scene == "gaussians" else 64


def run_speed_bench(cfg: SpeedConfig) -> dict[str, Any]:
    """Run every requested row, print the table, write ``json_out``; returns the results."""
    device, arch, dtype = resolve(cfg)
    if device.type == "cuda":
        from sds3d.priors.stable_diffusion import enable_tf32

        enable_tf32()
    rate = matmul_tflops(device, dtype)
    header: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "arch": arch,
        "dtype": str(dtype).removeprefix("torch."),
        "matmul_tflops": rate,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
    }
    print(format_table(header | {"rows": [], "skipped": []}), flush=True)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="sds3d-bench-emb-") as emb_dir:
        prior_2d = build_sd_prior(
            arch, device, dtype, Path(emb_dir), seed=cfg.seed, channels_last=cfg.channels_last, compile_unet=cfg.compile, tiny_vae=cfg.tiny_vae
        )
        prior_mv: Any = None
        mv_error = ""
        if any(g in MULTI_VIEW for g in cfg.guidance):
            try:
                prior_mv = build_mvdream_prior(
                    arch, device, dtype, seed=cfg.seed, channels_last=cfg.channels_last, compile_unet=cfg.compile
                )
            except ModuleNotFoundError as e:
                mv_error = f"module {e.name} is not there yet"
        for g in sorted(cfg.guidance, key=lambda name: name == "vsd"):  # VSD adds a LoRA to the UNet: last
            for sc in cfg.scene:
                if g in MULTI_VIEW and prior_mv is None:
                    skipped.append({"guidance": g, "scene": sc, "reason": mv_error})
                    continue
                priors = (None if g == "mvsds" else prior_2d, prior_mv if g in MULTI_VIEW else None)
                res = cfg.resolution or default_resolution(arch, sc)
                try:
                    rows.append(bench_row(cfg, g, sc, priors, res, device, rate))
                    print(format_row(rows[-1]), flush=True)
                except Exception as e:  # noqa: BLE001 - one failing row must not lose the finished ones
                    traceback.print_exc()
                    skipped.append({"guidance": g, "scene": sc, "reason": f"{type(e).__name__}: {str(e)[:300]}"})
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                write_json(cfg.json_out, header | {"rows": rows, "skipped": skipped})  # partial results survive a kill
    result = header | {"rows": rows, "skipped": skipped}
    result["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(format_table(result))
    write_json(cfg.json_out, result)
    return result


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


COLUMNS = [
    ("guidance", "guidance", "{}"), ("scene", "scene", "{}"), ("res", "resolution", "{}"),
    ("step ms", "step_ms", "{:.1f}"), ("render", "render_ms", "{:.1f}"), ("vae", "vae_ms", "{:.1f}"),
    ("unet", "unet_ms", "{:.1f}"), ("backward", "backward_ms", "{:.1f}"), ("optim", "optim_ms", "{:.1f}"),
    ("other", "other_ms", "{:.1f}"), ("floor ms", "floor_ms", "{:.1f}"), ("step/floor", "step_over_floor", "{:.2f}"),
    ("flop-floor ms", "flop_floor_ms", "{:.1f}"), ("peak MB", "peak_mb", "{:.0f}"),
]  # fmt: skip


def format_row(row: dict[str, Any]) -> str:
    """One benchmark row as a Markdown table line (``COLUMNS``)."""
    return "| " + " | ".join("n/a" if row[key] is None else fmt.format(row[key]) for _, key, fmt in COLUMNS) + " |"


def format_table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table, with a header line naming device, arch and dtype."""
    head = (
        f"sds3d bench speed: {result['device_name']} ({result['device']}), arch {result['arch']}, "
        f"{result['dtype']}, matmul {result['matmul_tflops']:.2f} TFLOP/s, {result['date']}"
    )
    lines = [head, "", "| " + " | ".join(c[0] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [format_row(row) for row in result["rows"]]
    for s in result["skipped"]:
        lines.append(f"skipped {s['guidance']} x {s['scene']}: {s['reason']}")
    return "\n".join(lines)


if __name__ == "__main__":
    import tyro

    run_speed_bench(tyro.cli(SpeedConfig))
