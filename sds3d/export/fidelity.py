"""How faithful is the exported mesh? Mesh-vs-scene image metrics, and Chamfer distance.

Mesh fidelity (for ``summary.json``): on the evaluation cameras, ray-cast the exported mesh
with albedo shading (no lighting, so it is comparable to the scene's emitted colour) and
render the scene, both over white. The mesh is ray-cast with ``SUPERSAMPLE`` x
``SUPERSAMPLE`` rays per pixel and averaged (anti-aliased, as a 3D viewer shows it; one ray
per pixel gives staircase edges that the scene's smooth renders do not have, which cost
0.6-3.2 dB, on average 1.9 dB, on the exemplar benchmark's meshes without saying anything
about the mesh). ``a_mesh`` below is that pixel coverage. Then

    PSNR = 10 log10(1 / MSE(mesh_rgb, scene_rgb))     (all pixels, all views, RGB in [0,1])
    IoU  = |{a_mesh > 0.5} & {a_scene > 0.5}| / |{a_mesh > 0.5} | {a_scene > 0.5}|

and ``psnr_object``, the headline: the PSNR over the union of the two masks only (the object's
pixels; the whole-frame PSNR is inflated by the empty white background, where holes and flakes
of the mesh vanish, and lowered by a scene with a learned background colour). The export
measures at the size users look at (the larger of ``--export.eval-resolution``, 128 by default,
and the mesh turntable's size).

Chamfer distance between two surfaces (used by the exemplar benchmark against the true
mesh): with point sets A, B sampled uniformly on the surfaces (area-weighted),

    CD = 0.5 * (mean_{a in A} min_{b in B} |a - b| + mean_{b in B} min_{a in A} |a - b|)

in world units (Euclidean, not squared).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from scipy.spatial import cKDTree
from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.export.turntable import render_mesh_views
from sds3d.types import Scene


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of images in [0,1] (inf when identical)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def mask_iou(a: Tensor, b: Tensor, level: float = 0.5) -> float:
    """IoU of the masks ``a > level`` and ``b > level`` (1 when both are empty)."""
    ma, mb = a > level, b > level
    union = int((ma | mb).sum())
    return 1.0 if union == 0 else int((ma & mb).sum()) / union


@torch.no_grad()
def render_scene(scene: Scene, cameras: Cameras, device: torch.device | str, batch: int = 4) -> tuple[Tensor, Tensor]:
    """Scene renders over white on the CPU: (rgb [B,H,W,3], alpha [B,H,W,1])."""
    rgbs, alphas = [], []
    for i in range(0, len(cameras), batch):
        cams = cameras[i : i + batch].to(device)
        out = scene.render(cams, torch.ones(len(cams), 3, device=device))
        rgbs.append(out.rgb.float().cpu())
        alphas.append(out.alpha.float().cpu())
    return torch.cat(rgbs), torch.cat(alphas)


SUPERSAMPLE = 4
"""Rays per pixel along each image axis of the mesh renders in :func:`mesh_fidelity` at up to
128 px; larger renders use fewer (at least 512 rays along each axis in all)."""


def supersample_for(size: int) -> int:
    """Rays per pixel along each axis for a ``size``-pixel render: ``SUPERSAMPLE`` at up to 128 px, fewer above."""
    return max(1, min(SUPERSAMPLE, -(-512 // size)))


def render_mesh_antialiased(mesh: trimesh.Trimesh, cameras: Cameras, supersample: int = SUPERSAMPLE) -> tuple[Tensor, Tensor]:
    """Albedo ray casts at ``supersample`` times the size, box-filtered back: (rgb, alpha) on white."""
    s = supersample
    rgb, alpha = render_mesh_views(mesh, cameras.resized(cameras.width * s, cameras.height * s), shading="albedo")
    if s > 1:
        rgb, alpha = (F.avg_pool2d(x.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1) for x in (rgb, alpha))
    return rgb, alpha


def mesh_fidelity(mesh: trimesh.Trimesh, scene: Scene, cameras: Cameras, device: torch.device | str) -> dict[str, float]:
    """``{"psnr", "psnr_object" (dB), "mask_iou", "views", "resolution"}`` of mesh vs scene renders."""
    scene_rgb, scene_alpha = render_scene(scene, cameras, device)
    mesh_rgb, mesh_alpha = render_mesh_antialiased(mesh, cameras, supersample_for(cameras.height))
    union = ((mesh_alpha > 0.5) | (scene_alpha > 0.5))[..., 0]
    return {
        "psnr": psnr(mesh_rgb, scene_rgb),
        "psnr_object": psnr(mesh_rgb[union], scene_rgb[union]) if union.any() else math.inf,
        "mask_iou": mask_iou(mesh_alpha, scene_alpha),
        "views": len(cameras),
        "resolution": cameras.height,
    }


def chamfer_distance(a: trimesh.Trimesh, b: trimesh.Trimesh, points: int = 30_000, seed: int = 0) -> float:
    """Symmetric mean Chamfer distance between two surfaces (module docstring), world units."""
    pa = trimesh.sample.sample_surface(a, points, seed=seed)[0]
    pb = trimesh.sample.sample_surface(b, points, seed=seed + 1)[0]
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    return float(0.5 * (np.mean(d_ab) + np.mean(d_ba)))
