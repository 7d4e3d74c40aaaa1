"""Rasterizer benchmark: a naive dense per-pixel reference vs the tile-binned torch rasterizer.

The reference (:func:`naive_rasterize`) is the definition the fast paths are tested against:
for every camera it evaluates every pixel against every Gaussian (dense [pixels, N]),
sorts by depth and alpha-composites front to back with gsplat's rules (alpha clamp 0.999,
skip below 1/255, exclusive stop at transmittance 1e-4). It re-derives the EWA projection
with full matrices and ``torch.linalg.inv`` instead of sharing code with the rasterizer.

    python -m sds3d.bench.rasterizer [--gaussians 4096 --views 4 --size 64 --repeats 3]
    sds3d bench rasterizer --contention --gaussians 8192   (threads 1 / all / auto, idle and busy)
    sds3d bench rasterizer --contention --train-step      (the same for a whole exemplar training step)
    sds3d bench rasterizer [same options]
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor

from sds3d.cameras import orbit_cameras
from sds3d.render import TORCH_TILE_SIZE, rasterize_gaussians
from sds3d.render.torch_rasterizer import eval_sh
from sds3d.threads import auto_threads, busy_other_cpus, usable_cpus


def naive_rasterize(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int, sh_degree: int | None = None,
    backgrounds: Tensor | None = None, near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = 0.3,
) -> tuple[Tensor, Tensor]:
    """Dense reference: colors [C,H,W,D], alphas [C,H,W,1]; colors [N,D] or SH [N,K,3]."""
    out_rgb, out_alpha = [], []
    q = F.normalize(quats, dim=-1)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack([
        torch.stack([1 - 2 * (y**2 + z**2), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x**2 + z**2), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x**2 + y**2)], -1),
    ], -2)
    cov3d = rot @ torch.diag_embed(scales**2) @ rot.transpose(-1, -2)
    v, u = torch.meshgrid(torch.arange(height, dtype=means.dtype), torch.arange(width, dtype=means.dtype), indexing="ij")
    pix = torch.stack([u.flatten(), v.flatten()], -1) + 0.5  # [P,2]
    for c in range(viewmats.shape[0]):
        R, t, K = viewmats[c, :3, :3], viewmats[c, :3, 3], Ks[c]
        p_cam = means @ R.T + t
        depth = p_cam[:, 2]
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        # gsplat clamps the Jacobian's x/z, y/z to 1.3x the image frustum
        xz = p_cam[:, 0] / depth
        yz = p_cam[:, 1] / depth
        xz_c = xz.clamp(-(cx / fx + 0.15 * width / fx), (width - cx) / fx + 0.15 * width / fx)
        yz_c = yz.clamp(-(cy / fy + 0.15 * height / fy), (height - cy) / fy + 0.15 * height / fy)
        J = torch.zeros(len(means), 2, 3, dtype=means.dtype)
        J[:, 0, 0], J[:, 0, 2] = fx / depth, -fx * xz_c / depth
        J[:, 1, 1], J[:, 1, 2] = fy / depth, -fy * yz_c / depth
        cov2d = J @ R @ cov3d @ R.T @ J.transpose(-1, -2) + eps2d * torch.eye(2, dtype=means.dtype)
        precision = torch.linalg.inv(cov2d)
        center = torch.stack([fx * xz + cx, fy * yz + cy], -1)
        if sh_degree is None:
            rgb = colors
        else:
            campos = -R.T @ t
            rgb = (eval_sh(sh_degree, means - campos, colors) + 0.5).clamp_min(0)
        order = torch.argsort(depth)
        inside = (depth > near_plane) & (depth < far_plane)
        order = order[inside[order]]
        dx = pix[:, None, 0] - center[order][None, :, 0]  # [P,n]
        dy = pix[:, None, 1] - center[order][None, :, 1]
        prec = precision[order]
        power = 0.5 * (prec[:, 0, 0] * dx * dx + prec[:, 1, 1] * dy * dy) + prec[:, 0, 1] * dx * dy
        alpha = (opacities[order][None] * torch.exp(-power)).clamp(max=0.999)
        alpha = torch.where((alpha >= 1 / 255) & (power >= 0), alpha, torch.zeros_like(alpha))
        with torch.no_grad():  # exclusive stop: drop everything from the first T_next <= 1e-4 on
            alive = torch.cumprod(1 - alpha, -1) > 1e-4
        alpha = alpha * alive
        trans = torch.cumprod(1 - alpha, -1)
        T_before = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], -1)
        weights = alpha * T_before  # [P,n]
        image = weights @ rgb[order]
        T_final = trans[:, -1] if trans.shape[1] else torch.ones(len(pix), dtype=means.dtype)
        if backgrounds is not None:
            image = image + T_final[:, None] * backgrounds[c]
        out_rgb.append(image.reshape(height, width, -1))
        out_alpha.append((1 - T_final).reshape(height, width, 1))
    return torch.stack(out_rgb), torch.stack(out_alpha)


def random_scene(n: int, sh_degree: int | None = None, radius: float = 0.5, seed: int = 0,
                 scale: tuple[float, float] = (0.01, 0.06), dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """n Gaussians in a ball: means, quats, scales, opacities, colors (RGB or SH coefficients)."""
    g = torch.Generator().manual_seed(seed)
    dirs = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = dirs * radius * torch.rand(n, 1, generator=g) ** (1 / 3)
    lo, hi = math.log(scale[0]), math.log(scale[1])
    scales = torch.exp(lo + (hi - lo) * torch.rand(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    opacities = 0.05 + 0.9 * torch.rand(n, generator=g)
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = 0.5 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g)
    scene = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors}
    return {k: v.to(dtype) for k, v in scene.items()}


def _time(fn: Callable[[], None], repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run(gaussians: int = 4096, views: int = 4, size: int = 64, repeats: int = 3, tile_size: int = TORCH_TILE_SIZE) -> dict[str, float]:
    """Median seconds of fwd and fwd+bwd for both renderers, and the speed-ups.

    The naive reference is timed once without warm-up (it is tens of times slower)."""
    scene = random_scene(gaussians)
    cams = orbit_cameras([15.0] * views, [i * 360.0 / views for i in range(views)], 3.25, 42.5, size, size)
    bg = torch.ones(views, 3)

    def make(render: Callable[..., tuple[Tensor, Tensor]]) -> tuple[Callable[[], None], Callable[[], None]]:
        def forward(backward: bool) -> None:
            params = {k: v.clone().requires_grad_(backward) for k, v in scene.items()}
            rgb, _ = render(params)
            if backward:
                rgb.square().mean().backward()
        return (lambda: forward(False)), (lambda: forward(True))

    naive = lambda p: naive_rasterize(**p, viewmats=cams.viewmats, Ks=cams.Ks, width=size, height=size, backgrounds=bg)  # noqa: E731
    fast = lambda p: rasterize_gaussians(  # noqa: E731
        **p, viewmats=cams.viewmats, Ks=cams.Ks, width=size, height=size, backgrounds=bg, packed=False,
        tile_size=tile_size, backend="torch",
    )[:2]
    res: dict[str, float] = {}
    for name, render in (("naive", naive), ("torch", fast)):
        fwd, fwd_bwd = make(render)
        n, warm = (1, False) if name == "naive" else (repeats, True)
        with torch.no_grad():
            res[f"{name}_fwd"] = _time(fwd, n, warm)
        res[f"{name}_fwd_bwd"] = _time(fwd_bwd, n, warm)
    res["speedup_fwd"] = res["naive_fwd"] / res["torch_fwd"]
    res["speedup_fwd_bwd"] = res["naive_fwd_bwd"] / res["torch_fwd_bwd"]
    return res


@dataclass(frozen=True)
class RasterizerBenchConfig:
    """Naive dense reference vs the torch tile rasterizer, forward and forward+backward."""

    gaussians: int = 4096
    """Number of random Gaussians (ball of radius 0.5)."""
    views: int = 4
    """Cameras rendered together."""
    size: int = 64
    """Image width and height in pixels."""
    repeats: int = 3
    """Timed repeats of the torch rasterizer (median) after one warm-up."""
    tile_size: int = TORCH_TILE_SIZE
    """Tile size of the torch rasterizer."""
    json_out: str | None = None
    """Also write the numbers to this JSON file."""
    contention: bool = False
    """Instead: time the torch rasterizer's forward+backward at 1 thread, every core and sds3d's
    automatic count (sds3d.threads), idle and with one busy process beside it, side by side."""
    train_step: bool = False
    """With --contention: time a whole training step of the README demo (exemplar prior, CPU)
    instead of the rasterizer alone."""


def _train_step_fn(prompt: str = "a snowman") -> tuple[Callable[[], None], str]:
    """One step of the README demo's run (exemplar recipe on CPU): sample cameras, render,
    guidance, regularization, backward, optimizer step."""
    from sds3d.factory import build_guidance, build_prompts, build_scene, load_priors, precompute_prompts
    from sds3d.recipes import resolve_run
    from sds3d.train import seed_everything, train_step

    cfg = resolve_run({"prior": "exemplar", "device": "cpu"})
    device = torch.device("cpu")
    prompts = build_prompts(prompt, cfg)
    priors = load_priors(cfg, device)
    precompute_prompts(priors, [prompts])
    seed_everything(cfg.seed)
    guidance = build_guidance(cfg, prompts, *priors)
    scene = build_scene(cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    state = {"step": 0}

    def step() -> None:
        train_step(scene, guidance, cfg, state["step"], gen, device)
        state["step"] += 1

    return step, f"exemplar training step ({prompt!r}, --device cpu, batch {cfg.batch_size})"


def _rasterizer_step_fn(cfg: "RasterizerBenchConfig") -> tuple[Callable[[], None], str]:
    scene = random_scene(cfg.gaussians)
    cams = orbit_cameras([15.0] * cfg.views, [i * 360.0 / cfg.views for i in range(cfg.views)], 3.25, 42.5, cfg.size, cfg.size)
    bg = torch.ones(cfg.views, 3)

    def step() -> None:
        params = {k: v.clone().requires_grad_(True) for k, v in scene.items()}
        rgb = rasterize_gaussians(**params, viewmats=cams.viewmats, Ks=cams.Ks, width=cfg.size, height=cfg.size,
                                  backgrounds=bg, packed=False, tile_size=cfg.tile_size, backend="torch")[0]
        rgb.square().mean().backward()

    return step, f"torch rasterizer fwd+bwd, {cfg.views} views of {cfg.size}x{cfg.size}, {cfg.gaussians} Gaussians"


def contention_table(cfg: RasterizerBenchConfig) -> dict[str, float]:
    """Step seconds for threads 1 / all / auto, idle and beside one busy process (a python busy
    loop started here), in one run."""
    step, what = _train_step_fn() if cfg.train_step else _rasterizer_step_fn(cfg)
    before, res = torch.get_num_threads(), {}
    every = max(1, int(usable_cpus()))
    for load in ("idle", "busy"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
        try:
            time.sleep(0.3 if busy else 0.0)
            for name in ("1", "all", "auto"):
                n = {"1": 1, "all": every}.get(name) or auto_threads(usable_cpus(), busy_other_cpus(0.3))
                torch.set_num_threads(n)
                res[f"{load}_{name}"], res[f"{load}_{name}_threads"] = _time(step, cfg.repeats), n
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    torch.set_num_threads(before)
    best_idle = min(res["idle_1"], res["idle_all"])
    print(f"{what}, median of {cfg.repeats}, {every} usable CPUs")
    print(f"{'threads':<10}{'idle [s]':>10}{'n':>4}{'busy [s]':>10}{'n':>4}{'busy / busy 1-thr':>19}{'idle / best idle':>18}")
    for name in ("1", "all", "auto"):
        i, b = res[f"idle_{name}"], res[f"busy_{name}"]
        print(f"{name:<10}{i:>10.4f}{res[f'idle_{name}_threads']:>4}{b:>10.4f}{res[f'busy_{name}_threads']:>4}"
              f"{b / res['busy_1']:>18.2f}x{i / best_idle:>17.2f}x")
    return res


def run_rasterizer_bench(cfg: RasterizerBenchConfig) -> dict[str, float]:
    """Run, print the table, optionally write JSON; returns the numbers."""
    if cfg.contention:
        res = contention_table(cfg)
        if cfg.json_out:
            Path(cfg.json_out).write_text(json.dumps({**asdict(cfg), **res}, indent=2))
        return res
    res = run(cfg.gaussians, cfg.views, cfg.size, cfg.repeats, cfg.tile_size)
    print(f"{cfg.views} views of {cfg.size}x{cfg.size}, {cfg.gaussians} Gaussians, "
          f"{torch.get_num_threads()} threads, torch median of {cfg.repeats}")
    print(f"{'pass':<10}{'naive [s]':>12}{'torch [s]':>12}{'speed-up':>10}")
    for p in ("fwd", "fwd_bwd"):
        print(f"{p:<10}{res[f'naive_{p}']:>12.4f}{res[f'torch_{p}']:>12.4f}{res[f'speedup_{p}']:>9.1f}x")
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps({**asdict(cfg), **res}, indent=2))
    return res


def main() -> None:
    run_rasterizer_bench(tyro.cli(RasterizerBenchConfig))


if __name__ == "__main__":
    main()
