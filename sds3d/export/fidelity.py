"""How faithful is the exported mesh? Mesh-vs-scene image metrics (:mod:`sds3d.metrics`).

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

The formulas of PSNR, mask IoU and the Chamfer distance between two surfaces live in
:mod:`sds3d.metrics` (re-exported here); the export uses the PSNR without an MSE floor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.export.turntable import render_mesh_views
from sds3d.metrics import mask_iou, psnr
from sds3d.types import Scene, render_views



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
    scene_out = render_views(scene, cameras, device)
    scene_rgb, scene_alpha = scene_out.rgb, scene_out.alpha
    mesh_rgb, mesh_alpha = render_mesh_antialiased(mesh, cameras, supersample_for(cameras.height))
    union = ((mesh_alpha > 0.5) | (scene_alpha > 0.5))[..., 0]
    return {
        "psnr": psnr(mesh_rgb, scene_rgb),
        "psnr_object": psnr(mesh_rgb[union], scene_rgb[union]) if union.any() else math.inf,
        "mask_iou": mask_iou(mesh_alpha, scene_alpha),
        "views": len(cameras),
        "resolution": cameras.height,
    }

