"""CPU mesh ray caster: ground-truth renders of triangle meshes (trimesh + Embree).

Every pixel of every camera casts one ray (``Cameras.rays()``, through the pixel centre); the
first hit is found with trimesh's Embree intersector (``mesh.ray.intersects_id``, all rays
in one call). At a hit on triangle ``f`` with barycentric coordinates ``(b0, b1, b2)``:

* colour: vertex colours interpolated ``sum_k b_k c[f_k]``; or the face colour; or, for a
  ``TextureVisuals`` mesh, the texture image sampled bilinearly at the interpolated UV
  ``sum_k b_k uv[f_k]`` (trimesh's convention: v = 0 at the bottom row of the image);
  a textured mesh without an image uses its material's main colour.
* shading ``"albedo"``: that colour. ``"lambert"``: a headlight (a light at the camera),
  ``colour * (AMBIENT + (1 - AMBIENT) |n . d|)`` with ``n`` the flat face normal, ``d`` the
  ray direction and ``AMBIENT = 0.35`` (two-sided, so open or inverted meshes still shade).
* alpha is 1 on hits and 0 elsewhere; rgb = alpha * colour + (1 - alpha) * background.
* depth is camera-space z (distance along the camera's forward axis, as gsplat reports),
  0 where the ray misses.

This renderer is independent of the scene renderers (Gaussians, NeRF) it is used to score.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import trimesh
from torch import Tensor

from sds3d.cameras import Cameras

AMBIENT = 0.35
"""Ambient term of the Lambert headlight shading."""


def _background(background: Tensor | tuple[float, float, float], batch: int) -> np.ndarray:
    bg = torch.as_tensor(background, dtype=torch.float32).detach().cpu()
    if bg.ndim == 1:
        bg = bg[None].expand(batch, 3)
    if bg.shape != (batch, 3):
        raise ValueError(f"background must be [3] or [{batch},3], got {tuple(bg.shape)}")
    return bg.numpy().astype(np.float64)


def _hit_colors(mesh: trimesh.Trimesh, faces: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """[N,3] colours in [0,1] at hit points (triangle ids ``faces``, barycentrics ``bary``)."""
    visual = mesh.visual
    tri = mesh.faces[faces]  # [N,3] vertex ids
    if isinstance(visual, trimesh.visual.TextureVisuals):
        material = visual.material
        simple = material.to_simple() if hasattr(material, "to_simple") else material
        image = getattr(simple, "image", None)
        if image is not None and visual.uv is not None and len(visual.uv) == len(mesh.vertices):
            uv = np.einsum("nk,nkc->nc", bary, np.asarray(visual.uv, dtype=np.float64)[tri])
            rgba = trimesh.visual.color.uv_to_interpolated_color(uv, image)
            return rgba[:, :3].astype(np.float64) / 255.0
        main = np.asarray(getattr(simple, "main_color", [200, 200, 200, 255]), dtype=np.float64)
        return np.broadcast_to(main[:3] / 255.0, (len(faces), 3)).copy()
    if visual.kind == "face":
        return np.asarray(visual.face_colors, dtype=np.float64)[faces, :3] / 255.0
    vc = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0  # default: grey
    return np.einsum("nk,nkc->nc", bary, vc[tri])


def raycast_mesh(
    mesh: trimesh.Trimesh,
    cameras: Cameras,
    background: Tensor | tuple[float, float, float] = (1.0, 1.0, 1.0),
    shading: Literal["albedo", "lambert"] = "lambert",
) -> tuple[Tensor, Tensor, Tensor]:
    """Render ``mesh`` from ``cameras``: rgb [B,H,W,3] in [0,1] over ``background``
    ([3] or [B,3]), alpha [B,H,W,1] (0/1), depth [B,H,W,1] (camera z, 0 where empty).

    Float32 tensors on ``cameras.device``; no gradients.
    """
    if shading not in ("albedo", "lambert"):
        raise ValueError(f"shading must be 'albedo' or 'lambert', got {shading!r}")
    B, H, W = len(cameras), cameras.height, cameras.width
    bg = _background(background, B)
    cams = cameras.to("cpu")
    with torch.no_grad():
        origins, dirs = cams.rays()
        forward = cams.c2w()[:, :3, 2]  # OpenCV: camera z axis in world coordinates
    o = origins.reshape(-1, 3).double().numpy()
    d = dirs.reshape(-1, 3).double().numpy()
    n_rays = o.shape[0]

    rgb = np.repeat(bg, H * W, axis=0)  # [B*H*W,3]
    alpha = np.zeros(n_rays)
    depth = np.zeros(n_rays)
    if len(mesh.faces) > 0:
        tri_ids, ray_ids, locations = mesh.ray.intersects_id(
            o, d, multiple_hits=False, return_locations=True
        )
        if len(ray_ids) > 0:
            tri_ids = np.asarray(tri_ids, dtype=np.int64)
            ray_ids = np.asarray(ray_ids, dtype=np.int64)
            locations = np.asarray(locations, dtype=np.float64)
            bary = trimesh.triangles.points_to_barycentric(mesh.triangles[tri_ids], locations)
            bary = np.clip(np.nan_to_num(bary, nan=1.0 / 3.0), 0.0, 1.0)
            bary = bary / bary.sum(axis=1, keepdims=True).clip(1e-12)
            color = _hit_colors(mesh, tri_ids, bary)
            if shading == "lambert":
                cos = np.abs(np.einsum("nc,nc->n", mesh.face_normals[tri_ids], d[ray_ids]))
                color = color * (AMBIENT + (1.0 - AMBIENT) * cos)[:, None]
            rgb[ray_ids] = np.clip(color, 0.0, 1.0)
            alpha[ray_ids] = 1.0
            fwd = forward.double().numpy().repeat(H * W, axis=0)[ray_ids]
            depth[ray_ids] = np.einsum("nc,nc->n", locations - o[ray_ids], fwd)

    dev = cameras.device
    to = lambda a, c: torch.from_numpy(a.reshape(B, H, W, c)).to(dtype=torch.float32, device=dev)  # noqa: E731
    return to(rgb, 3), to(alpha, 1), to(depth, 1)
