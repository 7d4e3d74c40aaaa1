"""Density grid, automatic iso-level, and marching cubes.

Geometry of an exported mesh is the level set ``{x : density(x) = tau}`` of the scene's
density field (``Scene.density``: opacity-weighted Gaussian density for 3D Gaussians,
volume density sigma for a NeRF), sampled on a regular grid over the scene bounds and
triangulated with marching cubes (Lorensen & Cline, "Marching cubes: a high resolution 3D
surface construction algorithm", SIGGRAPH 1987; implementation: PyMCubes).

Automatic threshold (``tau = None``), the *silhouette rule*: the exported mesh is opaque, so
it should cover exactly the pixels where the scene's own renders are opaque. A pixel is
covered by the level-``tau`` surface iff the maximum density along its ray exceeds ``tau``,
so for a set of held-out views (two rings, away from the evaluation cameras; rendered at the
size the mesh is judged at, ``--export.eval-resolution``, because a Gaussian scene's opacity
depends on the size it is rendered at: gsplat's screen-space filter widens small Gaussians
more at low resolution; on the exemplar benchmark, judged at 64x64, views at 96x96 had picked
levels 1.4-1.8x too high for its Gaussian scenes, and meshes with holes) we compute
``m(pixel) = max_s density(o + s d)`` from the grid (trilinear) and the render opacity
``alpha(pixel)`` (Gaussians: from ``scene.render``; NeRF and other volume densities: by
volume rendering the grid, ``1 - exp(-int sigma ds)``, which is what the NeRF renders), and
choose

    tau* = argmax_tau IoU({m > tau}, {alpha > 0.5})

over log-spaced candidates; where a plateau of near-best levels exists (a sharp surface,
any level in a range gives the same silhouette) we take its geometric middle. The rule has
no scale parameter: it is invariant to multiplying the density by a constant, so it works
for Gaussian densities (values around the opacities, ~1) and NeRF densities (tens to
thousands) alike, and it picks the render-opacity-equivalent level of soft profiles.

Closing gaps (:func:`close_gaps`, ``--export.close-radius r``): the SDS scenes are fuzzy, so
the level set of their density is porous (tunnels between neighbouring Gaussians, pinholes, a
gap at a neck) even where the renders look solid. Before marching cubes, the occupancy
``O = {density > tau}`` gets a morphological closing with a ball of radius ``r`` (dilate by
``r``, then erode by ``r``, both through exact squared Euclidean distance transforms of the
``edt`` package, on the occupancy's bounding box) and its enclosed cavities are filled; voxels
that this adds are raised to ``1.5 tau``. Closing only adds space that a ball of radius ``r``
cannot enter from outside (gaps, tunnels and dents narrower than ``2r``), so the silhouette and
every concavity wider than that stay as they were, and where nothing is added the surface keeps
its sub-voxel position from the density.
"""

from __future__ import annotations

import math
from typing import Literal

import edt
import mcubes
import numpy as np
from scipy import ndimage
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from sds3d.cameras import CameraConfig, Cameras, orbit_cameras
from sds3d.types import GridDensity, Scene, SDS3DError, render_views

SCENE_LIMIT = 1.25
"""Half-size of the largest box exported (the scene fits the unit sphere; a margin for Gaussians)."""
THRESHOLD_VIEWS = 8
THRESHOLD_RESOLUTION = 96
THRESHOLD_CANDIDATES = 96
PLATEAU_TOLERANCE = 0.002
"""Levels whose IoU is within this of the best one count as the same silhouette."""
MARCH_STEP = 1.0
"""Ray-marching step through the grid, in voxels. On a 256^3 grid of a 30-step tiny-SD fog at
256 px the level is 0.19381, against 0.19406 with half-voxel steps over the box's whole
diagonal for every ray (the code before), in about 0.6x the time."""


def scene_bounds(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box [lo, hi] to sample the density in: ``scene.bounds()`` (Gaussians: the
    3-sigma extent of the visible ones; NeRF: the cube around its bounding sphere), clipped to
    ``[-SCENE_LIMIT, SCENE_LIMIT]^3``."""
    lo, hi = scene.bounds()
    return np.maximum(lo, -SCENE_LIMIT), np.minimum(hi, SCENE_LIMIT)


@torch.no_grad()
def density_grid(
    scene: Scene, lo: np.ndarray, hi: np.ndarray, resolution: int, device: torch.device | str, chunk: int = 1 << 18
) -> tuple[np.ndarray, np.ndarray, float]:
    """Density at the nodes of a grid with cubic voxels, ``resolution`` nodes along the longest axis.

    Returns ``(grid [nx,ny,nz] float32 indexed [ix,iy,iz], origin [3], voxel size)`` with node
    ``(i,j,k)`` at ``origin + voxel * (i,j,k)``; the grid carries one layer of zeros on every
    side so the surface closes at the box boundary.
    """
    if resolution < 8:
        raise SDS3DError(f"--export.resolution {resolution} is too small; use at least 8 (default 256)")
    extent = np.maximum(hi - lo, 1e-6)
    voxel = float(extent.max() / (resolution - 1))
    counts = np.ceil(extent / voxel - 1e-6).astype(int) + 1
    grid = np.zeros(tuple(counts + 2), dtype=np.float32)
    if isinstance(scene, GridDensity):  # 3D Gaussians: each one splatted onto the nodes near it
        origin = torch.as_tensor(lo, dtype=torch.float32, device=device)
        grid[1:-1, 1:-1, 1:-1] = scene.density_on_grid(origin, voxel, tuple(int(c) for c in counts)).float().cpu().numpy()
    else:
        axes = [torch.as_tensor(lo[a] + voxel * np.arange(counts[a]), dtype=torch.float32) for a in range(3)]
        yz = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), -1).reshape(-1, 2)
        slab = max(1, chunk // len(yz))
        for i0 in range(0, counts[0], slab):
            xs = axes[0][i0 : i0 + slab]
            pts = torch.cat([xs.repeat_interleave(len(yz))[:, None], yz.repeat(len(xs), 1)], dim=1)
            vals = torch.cat([scene.density(p.to(device)).float().cpu() for p in pts.split(chunk)])
            grid[1 + i0 : 1 + i0 + len(xs), 1:-1, 1:-1] = vals.reshape(len(xs), counts[1], counts[2]).numpy()
    if not np.isfinite(grid).all():
        raise SDS3DError("the scene density has NaN/Inf values; the checkpoint is broken, re-run training")
    return np.maximum(grid, 0.0), lo - voxel, voxel


def threshold_cameras(cameras_cfg: CameraConfig, n: int = THRESHOLD_VIEWS, resolution: int = THRESHOLD_RESOLUTION) -> Cameras:
    """Held-out views for the threshold: two rings (eval elevation +-20 deg), azimuths between the eval views."""
    k = torch.arange(n, dtype=torch.float32)
    az = (k + 0.5) * (360.0 / n)
    el = cameras_cfg.eval_elevation + torch.where(k % 2 == 0, 20.0, -20.0)
    return orbit_cameras(el, az, cameras_cfg.eval_distance, cameras_cfg.eval_fovy, resolution, resolution)


@torch.no_grad()
def ray_march_grid(
    grid: np.ndarray, origin: np.ndarray, voxel: float, cameras: Cameras, device: torch.device | str = "cpu", chunk: int = 1 << 22
) -> tuple[Tensor, Tensor]:
    """March every camera ray through the trilinearly interpolated grid (``MARCH_STEP`` voxels a step).

    Returns ``(max density, volume-rendering opacity 1 - exp(-sum sigma ds))``, both [B,H,W];
    the opacity is what a NeRF whose density is the grid renders.
    """
    vol = torch.from_numpy(grid).to(device).permute(2, 1, 0)[None, None].contiguous()  # [1,1,z,y,x] for grid_sample
    lo = torch.as_tensor(origin, dtype=torch.float32)
    size = torch.as_tensor((np.array(grid.shape) - 1) * voxel, dtype=torch.float32)
    o, d = cameras.to("cpu").rays()
    B, H, W, _ = o.shape
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    # slab intersection of each ray with the grid box; rays that miss it stay 0
    inv = 1.0 / torch.where(d.abs() < 1e-9, torch.full_like(d, 1e-9), d)
    t0, t1 = (lo - o) * inv, (lo + size - o) * inv
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    hit = torch.nonzero(far > near)[:, 0]
    hit = hit[torch.argsort(far[hit] - near[hit])]  # short chords first: each chunk takes the steps its longest chord needs
    step = MARCH_STEP * voxel
    max_steps = int(math.ceil(float(size.norm()) / step)) + 1
    o_n, d_n = (2.0 * (o[hit] - lo) / size - 1.0).to(device), (2.0 * d[hit] / size).to(device)  # grid_sample's [-1,1] box
    near, span = near[hit].to(device), (far[hit] - near[hit]).to(device)
    out, opacity = torch.zeros(len(o)), torch.zeros(len(o))
    rays_per_chunk = max(1, chunk // max_steps)
    for r in range(0, len(hit), rays_per_chunk):
        sl = slice(r, r + rays_per_chunk)
        steps = min(max_steps, max(2, int(math.ceil(float(span[sl].max()) / step)) + 1))
        s = torch.linspace(0.0, 1.0, steps, device=device)
        t = near[sl, None] + span[sl, None] * s[None]
        coords = torch.addcmul(o_n[sl, None], t[..., None], d_n[sl, None])
        vals = F.grid_sample(vol, coords[None, None], mode="bilinear", padding_mode="zeros", align_corners=True)
        vals = vals.reshape(-1, steps)
        out[hit[sl]] = vals.amax(-1).cpu()
        opacity[hit[sl]] = (1.0 - torch.exp(-vals.sum(-1) * span[sl] / (steps - 1))).cpu()
    return out.reshape(B, H, W), opacity.reshape(B, H, W)


def render_alpha(scene: Scene, cameras: Cameras, device: torch.device | str, batch: int = 4) -> Tensor:
    """[B,H,W] render opacity of the scene (evaluation renders on white, :func:`sds3d.types.render_views`)."""
    return render_views(scene, cameras, device, batch).alpha[..., 0]


def _iou_curve(m: Tensor, target: Tensor, taus: Tensor) -> Tensor:
    """IoU({m > tau}, target) for every tau, by counting in sorted values (O((P + K) log P))."""
    all_sorted = torch.sort(m).values
    in_target = torch.sort(m[target]).values
    above = len(m) - torch.searchsorted(all_sorted, taus, right=True)  # |{m > tau}|
    inter = len(in_target) - torch.searchsorted(in_target, taus, right=True)  # |{m > tau} & target|
    union = above + (len(in_target) - inter)
    return inter.double() / union.clamp_min(1).double()


def _plateau(iou: Tensor) -> tuple[int, int]:
    """Index range of the contiguous run of near-best values around the best one."""
    best = int(iou.argmax())
    good = (iou >= iou[best] - PLATEAU_TOLERANCE).tolist()
    a, b = best, best
    while a > 0 and good[a - 1]:
        a -= 1
    while b + 1 < len(good) and good[b + 1]:
        b += 1
    return a, b


def silhouette_threshold(max_density: Tensor, alpha: Tensor) -> tuple[float, float]:
    """The silhouette rule (module docstring): returns (tau, its IoU with {alpha > 0.5}).

    A coarse pass over log-spaced levels (5 decades below the maximum) finds the best
    plateau; a fine pass between its neighbours locates it to ~0.1% in level.
    """
    target = (alpha > 0.5).reshape(-1)
    m = max_density.reshape(-1).float()
    if not target.any():
        raise SDS3DError("the scene renders empty (no pixel with opacity > 0.5): nothing to export; check the run or pass --export.threshold")
    top = float(m.max())
    if top <= 0.0:
        raise SDS3DError("the scene density is zero everywhere: nothing to export; check the run")
    coarse = top * torch.logspace(-5, 0, THRESHOLD_CANDIDATES, dtype=torch.float64)[:-1]
    a, b = _plateau(_iou_curve(m, target, coarse.float()))
    lo, hi = float(coarse[max(a - 1, 0)]), float(coarse[min(b + 1, len(coarse) - 1)])
    fine = torch.logspace(math.log10(lo), math.log10(hi), 2 * THRESHOLD_CANDIDATES + 1, dtype=torch.float64)
    iou = _iou_curve(m, target, fine.float())
    a, b = _plateau(iou)
    tau = math.sqrt(float(fine[a]) * float(fine[b]))
    return tau, float(iou.max())


def auto_threshold(
    scene: Scene,
    grid: np.ndarray,
    origin: np.ndarray,
    voxel: float,
    cameras_cfg: CameraConfig,
    device: torch.device | str,
    opacity: Literal["render", "grid"] = "render",
    resolution: int = THRESHOLD_RESOLUTION,
) -> tuple[float, float]:
    """Threshold by the silhouette rule on :func:`threshold_cameras` views; returns (tau, IoU).

    ``opacity``: where the reference opacity comes from. ``"render"``: ``scene.render`` (for
    Gaussians, whose density is not a volume density). ``"grid"``: volume rendering of the
    density grid itself, exactly what a NeRF renders (up to the grid's sampling) and far
    cheaper than NeRF renders on a CPU.
    """
    cams = threshold_cameras(cameras_cfg, resolution=resolution)
    max_density, grid_opacity = ray_march_grid(grid, origin, voxel, cams, device)
    alpha = render_alpha(scene, cams, device) if opacity == "render" else grid_opacity
    return silhouette_threshold(max_density, alpha)


def close_gaps(grid: np.ndarray, threshold: float, radius_voxels: float) -> np.ndarray:
    """``grid`` with the voxels added by closing ``{grid > threshold}`` (module docstring) set to
    at least ``1.5 * threshold``; ``radius_voxels <= 0`` fills enclosed cavities only."""
    occupied = grid > threshold
    closed = occupied
    if radius_voxels > 0 and occupied.any():
        # Only the occupancy's bounding box: the distance transforms dominate the export's time.
        used = [np.flatnonzero(occupied.any(axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
        box = tuple(slice(int(u[0]), int(u[-1]) + 1) for u in used)
        pad = int(math.ceil(radius_voxels)) + 1
        padded = np.pad(occupied[box], pad)
        r2, threads = radius_voxels * radius_voxels, max(1, torch.get_num_threads())
        # Squared Euclidean distances to the nearest empty voxel (exact integers; the edt
        # package is ~10x faster than scipy.ndimage.distance_transform_edt on 256^3 grids).
        dilated = edt.edtsq(~padded, parallel=threads) <= r2
        eroded = edt.edtsq(dilated, parallel=threads) > r2
        closed = occupied.copy()
        closed[box] |= eroded[pad:-pad, pad:-pad, pad:-pad]
    closed = ndimage.binary_fill_holes(closed)
    added = closed & ~occupied
    if not added.any():
        return grid
    return np.where(added, np.maximum(grid, np.float32(1.5 * threshold)), grid).astype(np.float32)


def marching_cubes(grid: np.ndarray, threshold: float, origin: np.ndarray, voxel: float) -> trimesh.Trimesh:
    """Iso-surface ``grid = threshold`` in world coordinates, faces wound outward (dense inside)."""
    verts, faces = mcubes.marching_cubes(grid.astype(np.float64), float(threshold))
    if len(faces) == 0:
        raise SDS3DError(f"no surface at density level {threshold:.4g}: pass a lower --export.threshold or leave it automatic")
    verts = origin[None] + voxel * verts
    return trimesh.Trimesh(verts, faces.astype(np.int64), process=False)
