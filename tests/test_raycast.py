"""The CPU mesh ray caster: silhouettes, depth, colours, textures and shading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from sds3d.cameras import orbit_cameras
from sds3d.render.raycast import AMBIENT, raycast_mesh


def _front_camera(res: int = 64, distance: float = 3.0, fovy: float = 60.0):
    return orbit_cameras([0.0], [0.0], distance, fovy, res, res)


def test_unit_sphere_silhouette_area_and_centre_depth() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=1.0)
    res, d, fovy = 128, 3.0, 60.0
    rgb, alpha, depth = raycast_mesh(sphere, _front_camera(res, d, fovy), shading="albedo")
    assert rgb.shape == (1, res, res, 3) and alpha.shape == depth.shape == (1, res, res, 1)
    # Perspective silhouette of a unit sphere: a disc of angular radius asin(1/d).
    focal = 0.5 * res / math.tan(math.radians(fovy) / 2)
    r_pix = focal * math.tan(math.asin(1.0 / d))
    expected = math.pi * r_pix**2
    assert abs(float(alpha.sum()) - expected) / expected < 0.03
    c = res // 2
    assert abs(float(depth[0, c, c, 0]) - (d - 1.0)) < 0.01
    assert float(depth[0, 0, 0, 0]) == 0.0 and float(alpha[0, 0, 0, 0]) == 0.0
    assert set(torch.unique(alpha).tolist()) == {0.0, 1.0}


def test_background_vertex_colours_and_lambert() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    sphere.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(sphere.vertices), 1)).astype(np.uint8)
    cams = orbit_cameras([0.0, 10.0], [0.0, 90.0], 3.0, 50.0, 32, 32)
    bg = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    rgb, alpha, _ = raycast_mesh(sphere, cams, background=bg, shading="albedo")
    hit = alpha[..., 0] > 0
    assert torch.allclose(rgb[hit], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)
    assert torch.allclose(rgb[0][~hit[0]], bg[0]) and torch.allclose(rgb[1][~hit[1]], bg[1])
    lam, _, _ = raycast_mesh(sphere, cams, shading="lambert")
    red = lam[..., 0][hit]
    # Headlight: brightest facing the camera (~1), darkest at the rim (>= ambient).
    assert float(red.max()) > 0.98 and float(red.min()) >= AMBIENT - 1e-5
    assert float(lam[0, 16, 16, 0]) > float(lam[0, 16, 16 + 9, 0])


def test_face_colours_and_texture() -> None:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    fc = np.tile([0, 255, 0, 255], (len(box.faces), 1)).astype(np.uint8)
    box.visual.face_colors = fc
    rgb, alpha, _ = raycast_mesh(box, _front_camera(32), shading="albedo")
    assert torch.allclose(rgb[alpha[..., 0] > 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)

    # A quad facing +x, textured with left half black, right half white (u < 0.5 black).
    verts = np.array([[0, -1, -1], [0, 1, -1], [0, 1, 1], [0, -1, 1]], dtype=np.float64)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[:, 4:] = 255
    quad = trimesh.Trimesh(verts, faces, process=False)
    quad.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(img))
    rgb, alpha, _ = raycast_mesh(quad, _front_camera(32, 3.0, 60.0), shading="albedo")
    # Camera at +x looking at -x: image right = world +y = u -> 1 (white).
    row = rgb[0, 16, :, 0]
    hit = alpha[0, 16, :, 0] > 0
    cols = torch.nonzero(hit)[:, 0]
    assert float(row[cols[0]]) < 0.05 and float(row[cols[-1]]) > 0.95


def test_empty_scene_and_bad_shading() -> None:
    far = trimesh.creation.icosphere(radius=0.1)
    far.apply_translation([0, 0, 50])
    rgb, alpha, depth = raycast_mesh(far, _front_camera(16), background=(0.2, 0.3, 0.4))
    assert float(alpha.sum()) == 0 and float(depth.abs().sum()) == 0
    assert torch.allclose(rgb, torch.tensor([0.2, 0.3, 0.4]).expand_as(rgb))
    with pytest.raises(ValueError):
        raycast_mesh(far, _front_camera(16), shading="phong")  # type: ignore[arg-type]
