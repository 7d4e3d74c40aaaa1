"""Albedo texture baking: xatlas UVs, projection of scene renders with visibility, seam filling.

1. UV unwrap with xatlas (J. Young's xatlas, derived from thekla_atlas): vertices are split
   along chart seams; every face gets its own region of the [0,1]^2 atlas.
2. Rasterize the atlas: every texel centre inside a UV triangle gets that face and its
   barycentric coordinates, hence a surface point p and an interpolated normal n.
3. Colour per texel, by ``source``:
   - ``"renders"`` (the default; ``"auto"``, the name older runs saved, means the same):
     render the scene over black from ``views`` cameras spread evenly over the sphere
     (Fibonacci lattice) and project them onto the mesh. A view contributes to a texel when
     the texel faces it (cos > 0.1), projects inside the image, and is visible: a ray from
     ``p + eps n`` towards the camera hits no part of the mesh (trimesh/embree). Its colour is the un-premultiplied render
     ``rgb / alpha`` (bilinear), weighted by ``w = alpha cos^2(theta)`` (theta between n and
     the direction to the camera), so frontal views dominate and silhouettes matter less:
     ``c = sum_v w_v c_v / sum_v w_v``. Texels seen by no view take ``scene.albedo(p)``.
   - ``"albedo"``: ``c = scene.albedo(p)``, the colour field queried at the texel's surface
     point (needs no visibility, but it is not what the renders show: for Gaussians the
     density-weighted colour, for a NeRF the colour at the iso-surface, behind the layer its
     renders integrate).
   The same projection colours mesh vertices with ``--export.vertex-colors renders``.
4. Fill the texels outside every chart with the colour of the nearest covered texel
   (a Euclidean-distance-transform dilation), so bilinear filtering and mipmaps do not
   bleed the background into seams.
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
import xatlas
from PIL import Image
from scipy import ndimage

from sds3d.cameras import CameraConfig, Cameras, orbit_cameras
from sds3d.types import Scene, SDS3DError

TextureSource = Literal["renders", "albedo", "auto"]


def _parametrize(verts: np.ndarray, faces: np.ndarray, size: int, max_chart_area: float) -> tuple[np.ndarray, ...]:
    atlas = xatlas.Atlas()
    atlas.add_mesh(verts, faces)
    chart_options, pack_options = xatlas.ChartOptions(), xatlas.PackOptions()
    chart_options.max_chart_area = max_chart_area
    pack_options.resolution = int(size)
    pack_options.padding = 2
    atlas.generate(chart_options, pack_options)
    if atlas.atlas_count != 1:  # charts spilled into a second page: let xatlas size one page itself
        pack_options.resolution = 0
        atlas.generate(chart_options, pack_options)
    return atlas[0]


def uv_unwrap(mesh: trimesh.Trimesh, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas parametrization for a ``size``^2 texture: (vertex map into ``mesh.vertices`` [M], faces [F,3], uvs [M,2]).

    Charts are capped at 1/128 of the surface area: xatlas's chart growing is superlinear in
    chart size (a 100k-face sphere takes minutes uncapped, seconds capped); charts are packed
    with 2 texels of padding. xatlas can crash (segfault) on perfectly symmetric inputs, so it
    runs in a forked child process where available; after a crash it is retried once on
    positions jittered by 1e-4 of the mesh size (the UVs still belong to the original mesh).
    """
    verts = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces, dtype=np.uint32)
    max_chart_area = float(mesh.area) / 128.0
    rng, jitter = np.random.default_rng(0), 1e-4 * float(np.linalg.norm(mesh.extents))
    if "fork" not in multiprocessing.get_all_start_methods():
        out = _parametrize(verts, faces, size, max_chart_area)
    else:
        out = None
        for attempt in range(2):
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
                try:
                    out = pool.submit(_parametrize, verts, faces, size, max_chart_area).result()
                    break
                except BrokenProcessPool:
                    verts = verts + rng.normal(0.0, jitter, verts.shape).astype(np.float32)
        if out is None:
            raise SDS3DError("xatlas crashed unwrapping the mesh; export without --export.texture or with a lower --export.face-budget")
    vmapping, indices, uvs = out
    return vmapping.astype(np.int64), indices.astype(np.int64), uvs.astype(np.float64)


def rasterize_uv(uvs: np.ndarray, faces: np.ndarray, size: int, chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Which face covers each texel centre, and where.

    Texel (row r, column c) has its centre at ``u = (c + 0.5) / size``, ``v = 1 - (r + 0.5) / size``
    (trimesh/OBJ convention: v up, image row 0 at the top). Returns ``face [size,size]`` (-1 where
    empty) and ``bary [size,size,3]``. Vectorized over faces: every texel of each face's bounding
    box is a candidate.
    """
    xy = np.stack([uvs[:, 0] * size, (1.0 - uvs[:, 1]) * size], -1)[faces]  # [F,3,2] pixel units
    lo = np.clip(np.ceil(xy.min(1) - 0.5), 0, size - 1).astype(np.int64)
    hi = np.clip(np.floor(xy.max(1) - 0.5), 0, size - 1).astype(np.int64)
    n = np.maximum(hi - lo + 1, 0)
    counts = n[:, 0] * n[:, 1]
    face_of = np.full((size, size), -1, dtype=np.int64)
    bary_of = np.zeros((size, size, 3), dtype=np.float64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    f0 = 0
    while f0 < len(faces):
        f1 = int(np.searchsorted(starts, starts[f0] + chunk, side="right")) - 1
        f1 = min(max(f1, f0 + 1), len(faces))
        fid = np.repeat(np.arange(f0, f1), counts[f0:f1])
        local = np.arange(len(fid)) - np.repeat(starts[f0:f1] - starts[f0], counts[f0:f1])
        col = lo[fid, 0] + local % n[fid, 0]
        row = lo[fid, 1] + local // n[fid, 0]
        p = np.stack([col + 0.5, row + 0.5], -1)
        a, b, c = xy[fid, 0], xy[fid, 1], xy[fid, 2]
        v0, v1, v2 = b - a, c - a, p - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        den = np.where(np.abs(den) < 1e-12, np.nan, den)
        l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        l0 = 1.0 - l1 - l2
        inside = (l0 >= -1e-6) & (l1 >= -1e-6) & (l2 >= -1e-6)
        face_of[row[inside], col[inside]] = fid[inside]
        bary_of[row[inside], col[inside]] = np.stack([l0, l1, l2], -1)[inside]
        f0 = f1
    return face_of, bary_of


def sphere_cameras(cameras_cfg: CameraConfig, n: int, resolution: int) -> Cameras:
    """``n`` cameras on a Fibonacci lattice over the whole sphere (eval distance and fov)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    el = torch.rad2deg(torch.asin(z))
    az = torch.rad2deg(i * math.pi * (3.0 - math.sqrt(5.0)))
    return orbit_cameras(el.float(), az.float(), cameras_cfg.eval_distance, cameras_cfg.eval_fovy, resolution, resolution)


@torch.no_grad()
def albedo_at(scene: Scene, points: np.ndarray, device: torch.device | str, chunk: int = 1 << 16) -> np.ndarray:
    """``scene.albedo`` at [N,3] points (chunked), float64 in [0,1]."""
    pts = torch.as_tensor(points, dtype=torch.float32)
    out = [scene.albedo(p.to(device)).float().cpu() for p in pts.split(chunk)]
    return torch.cat(out).clamp(0, 1).double().numpy() if out else np.zeros((0, 3))


@torch.no_grad()
def project_renders(
    scene: Scene, mesh: trimesh.Trimesh, points: np.ndarray, normals: np.ndarray, cameras: Cameras, device: torch.device | str
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sums (colour [N,3], weight [N]) of the scene's renders projected on surface points."""
    eps = 1e-4 * float(np.linalg.norm(mesh.extents))
    col_sum = np.zeros((len(points), 3))
    w_sum = np.zeros(len(points))
    pts = torch.tensor(points, dtype=torch.float32)
    nrm = torch.tensor(normals, dtype=torch.float32)
    for v in range(len(cameras)):
        cam = cameras[v]
        out = scene.render(cam.to(device), torch.zeros(1, 3, device=device))
        rgba = torch.cat([out.rgb, out.alpha], -1)[0].float().cpu()  # [H,W,4]
        centre = cam.positions()[0]
        to_cam = centre - pts
        dist = to_cam.norm(dim=-1)
        cos = (nrm * to_cam).sum(-1) / dist.clamp_min(1e-9)
        p_cam = pts @ cam.viewmats[0, :3, :3].T + cam.viewmats[0, :3, 3]
        pix = p_cam @ cam.Ks[0].T
        xy = pix[:, :2] / pix[:, 2:].clamp_min(1e-9)
        W, H = cam.width, cam.height
        cand = (cos > 0.1) & (p_cam[:, 2] > 0) & (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
        idx = torch.nonzero(cand)[:, 0].numpy()
        if len(idx) == 0:
            continue
        dirs = (to_cam[idx] / dist[idx, None]).double().numpy()
        origins = points[idx] + eps * normals[idx]
        blocked = mesh.ray.intersects_any(origins, dirs)
        idx, xy_v = idx[~blocked], xy[idx[~blocked]]
        grid = torch.stack([2 * xy_v[:, 0] / W - 1, 2 * xy_v[:, 1] / H - 1], -1)[None, None]
        sample = F.grid_sample(rgba.permute(2, 0, 1)[None], grid, mode="bilinear", align_corners=False)[0, :, 0].T
        alpha = sample[:, 3]
        ok = alpha > 0.3
        colour = (sample[:, :3] / alpha.clamp_min(1e-6)[:, None]).clamp(0, 1)
        w = (alpha * cos[idx] ** 2) * ok
        col_sum[idx] += (w[:, None] * colour).double().numpy()
        w_sum[idx] += w.double().numpy()
    return col_sum, w_sum


def colours_from_renders(
    scene: Scene, mesh: trimesh.Trimesh, points: np.ndarray, normals: np.ndarray, cameras: Cameras, device: torch.device | str
) -> np.ndarray:
    """[N,3] colours of surface points from projected renders; points no view sees take ``scene.albedo``."""
    if len(cameras) < 1:
        raise SDS3DError("--export.bake-views must be at least 1 to take colours from renders")
    col_sum, w_sum = project_renders(scene, mesh, points, normals, cameras, device)
    colours = col_sum / np.maximum(w_sum, 1e-12)[:, None]
    unseen = w_sum <= 1e-8
    if unseen.any():
        colours[unseen] = albedo_at(scene, points[unseen], device)
    return colours


def fill_empty(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every uncovered texel takes the colour of the nearest covered one (seam dilation)."""
    if covered.all() or not covered.any():
        return image
    _, (rows, cols) = ndimage.distance_transform_edt(~covered, return_indices=True)
    return image[rows, cols]


def bake_texture(
    mesh: trimesh.Trimesh,
    scene: Scene,
    cameras_cfg: CameraConfig,
    size: int,
    views: int,
    source: TextureSource,
    device: torch.device | str,
) -> trimesh.Trimesh:
    """A copy of ``mesh`` with xatlas UVs and a baked ``size``^2 albedo texture (module docstring)."""
    if size < 16:
        raise SDS3DError(f"--export.texture-size {size} is too small; use at least 16 (default 1024)")
    vmap, faces, uvs = uv_unwrap(mesh, size)
    verts = np.asarray(mesh.vertices)[vmap]
    vnormals = np.asarray(mesh.vertex_normals)[vmap]
    face_of, bary = rasterize_uv(uvs, faces, size)
    covered = face_of >= 0
    fids, b = face_of[covered], bary[covered]
    points = np.einsum("nk,nkd->nd", b, verts[faces[fids]])
    normals = np.einsum("nk,nkd->nd", b, vnormals[faces[fids]])
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    if source != "albedo":  # renders (or auto, its old name)
        colours = colours_from_renders(scene, mesh, points, normals, sphere_cameras(cameras_cfg, views, min(size, 512)), device)
    else:
        colours = albedo_at(scene, points, device)
    image = np.ones((size, size, 3))
    image[covered] = colours
    image = fill_empty(image, covered)
    texture = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    material = trimesh.visual.material.PBRMaterial(
        name="mesh", baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=1.0
    )
    visual = trimesh.visual.TextureVisuals(uv=uvs, material=material)
    return trimesh.Trimesh(verts, faces, visual=visual, vertex_normals=vnormals, process=False)
