"""Texture baking: UV rasterization, projection of renders with visibility, seam filling, files."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import trimesh

from sds3d.cameras import CameraConfig
from sds3d.export.texture import bake_texture, fill_empty, rasterize_uv
from sds3d.export.writers import read_mesh, write_mesh
from sds3d.types import RenderOutput

RED, BLUE, GREEN = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0])


def red_blue(points):
    return torch.where(points[:, :1] > 0, RED, BLUE)


class RedBlueSphere:
    """Opaque sphere r = 0.5, red for x > 0 and blue for x < 0, rendered by exact ray casting.

    ``albedo`` can be set to a wrong colour so a bake from renders cannot borrow it."""

    volume_density = True

    def __init__(self, albedo_fn=red_blue):
        self.albedo_fn = albedo_fn

    def bounds(self):
        return np.full(3, -1.0), np.full(3, 1.0)

    def eval_mode(self):
        return contextlib.nullcontext()

    def albedo(self, points):
        return self.albedo_fn(points)

    def density(self, points):
        return (points.norm(dim=-1) < 0.5).float() * 100.0

    def render(self, cameras, background):
        o, d = cameras.rays()
        b = (o * d).sum(-1)
        disc = b * b - ((o * o).sum(-1) - 0.25)
        hit = disc > 0
        t = -b - torch.sqrt(disc.clamp_min(0))
        p = o + t[..., None] * d
        col = red_blue(p.reshape(-1, 3)).reshape(p.shape)
        alpha = hit.float()[..., None]
        rgb = alpha * col + (1 - alpha) * background[:, None, None, :]
        return RenderOutput(rgb, alpha, alpha * t[..., None])


def texel_colours(mesh, uv=None):
    """Texture colour [N,3] in [0,1] at uv coordinates [N,2] (default: the vertices'; nearest texel)."""
    mat = mesh.visual.material
    image = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
    image = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    uv = np.asarray(mesh.visual.uv if uv is None else uv, dtype=np.float64)
    size_h, size_w = image.shape[:2]
    col = np.clip((uv[:, 0] * size_w).astype(np.int64), 0, size_w - 1)
    row = np.clip(((1.0 - uv[:, 1]) * size_h).astype(np.int64), 0, size_h - 1)
    return image[row, col]


def surface_points(mesh):
    """3D point and uv of every covered texel of a textured mesh."""
    size = mesh.visual.material.baseColorTexture.size[0]
    face, bary = rasterize_uv(mesh.visual.uv, mesh.faces, size)
    covered = face >= 0
    f, b = face[covered], bary[covered]
    pts = np.einsum("nk,nkd->nd", b, mesh.vertices[mesh.faces[f]])
    uv = np.einsum("nk,nkd->nd", b, mesh.visual.uv[mesh.faces[f]])
    return pts, uv, covered


def check_red_blue(mesh, margin=0.03):
    pts, uv, _ = surface_points(mesh)
    got = texel_colours(mesh, uv)
    front, back = pts[:, 0] > margin, pts[:, 0] < -margin
    ok_front = (np.abs(got[front] - [1, 0, 0]).max(-1) < 0.1).mean()
    ok_back = (np.abs(got[back] - [0, 0, 1]).max(-1) < 0.1).mean()
    return ok_front, ok_back


def test_rasterize_uv_square():
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    face, bary = rasterize_uv(uvs, faces, 16)
    assert (face >= 0).all()
    # barycentrics reproduce the texel centre (v up, row 0 at the top)
    rows, cols = np.mgrid[0:16, 0:16]
    uv = np.einsum("rck,rckd->rcd", bary, uvs[faces[face]])
    np.testing.assert_allclose(uv[..., 0], (cols + 0.5) / 16, atol=1e-9)
    np.testing.assert_allclose(uv[..., 1], 1 - (rows + 0.5) / 16, atol=1e-9)
    half, _ = rasterize_uv(uvs, faces[:1], 16)  # lower-right triangle only
    assert 0.4 < (half >= 0).mean() < 0.6 and half[15, 15] == 0 and half[0, 0] == -1


def test_fill_empty_uses_nearest_covered_texel():
    image = np.zeros((4, 4, 3))
    covered = np.zeros((4, 4), bool)
    image[0, 0], covered[0, 0] = [1, 0, 0], True
    image[3, 3], covered[3, 3] = [0, 0, 1], True
    out = fill_empty(image, covered)
    np.testing.assert_array_equal(out[0, 1], [1, 0, 0])
    np.testing.assert_array_equal(out[3, 2], [0, 0, 1])


def test_bake_from_renders_gives_expected_texels():
    mesh = trimesh.creation.icosphere(3, radius=0.5)
    scene = RedBlueSphere(albedo_fn=lambda p: GREEN.expand(len(p), 3))  # albedo is wrong on purpose
    baked = bake_texture(mesh, scene, CameraConfig(), size=128, views=12, source="renders", device="cpu")
    ok_front, ok_back = check_red_blue(baked)
    assert ok_front > 0.98 and ok_back > 0.98
    image = np.asarray(baked.visual.material.baseColorTexture)
    assert (image[..., 1] > 128).mean() < 0.02  # hardly any texel fell back to the (green) albedo field


def test_texture_defaults_to_renders_for_every_scene():
    from sds3d.export import ExportConfig

    assert ExportConfig().texture_source == "renders"
    mesh = trimesh.creation.icosphere(2, radius=0.5)
    scene = RedBlueSphere(albedo_fn=lambda p: GREEN.expand(len(p), 3))  # a field scene: renders red/blue, albedo green
    image = {src: np.asarray(bake_texture(mesh, scene, CameraConfig(), size=64, views=8, source=src, device="cpu")
                             .visual.material.baseColorTexture) for src in ("renders", "auto", "albedo")}  # fmt: skip
    np.testing.assert_array_equal(image["auto"], image["renders"])  # older runs' name for renders
    assert (image["renders"][..., 1] > 128).mean() < 0.05 and (image["albedo"][..., 1] > 200).all()


def test_bake_from_albedo_field_and_textured_files(tmp_path):
    mesh = trimesh.creation.icosphere(3, radius=0.5)
    baked = bake_texture(mesh, RedBlueSphere(), CameraConfig(), size=64, views=1, source="albedo", device="cpu")
    ok_front, ok_back = check_red_blue(baked, margin=0.05)
    assert ok_front > 0.98 and ok_back > 0.98
    # dilation: no white background is left between the charts
    assert (np.asarray(baked.visual.material.baseColorTexture).min(-1) > 200).mean() == 0
    paths = write_mesh(baked, tmp_path, ["glb", "obj"])
    assert sorted(p.name for p in paths) == ["mesh.glb", "mesh.mtl", "mesh.obj", "mesh.png"]
    assert "map_Kd mesh.png" in (tmp_path / "mesh.mtl").read_text()
    for path in (tmp_path / "mesh.glb", tmp_path / "mesh.obj"):
        back = read_mesh(path)
        assert isinstance(back.visual, trimesh.visual.TextureVisuals)
        np.testing.assert_allclose(back.vertices.mean(0), baked.vertices.mean(0), atol=1e-5)
        # sample the reloaded texture at the reloaded uvs: front vertices red, back vertices blue
        colours = texel_colours(back)
        front = back.vertices[:, 0] > 0.1
        assert colours[front, 0].mean() > 0.9 and colours[~front & (back.vertices[:, 0] < -0.1), 2].mean() > 0.9


def test_vertex_colours_from_renders():
    from sds3d.export import ExportConfig, extract_mesh

    scene = RedBlueSphere(albedo_fn=lambda p: GREEN.expand(len(p), 3))  # albedo is wrong on purpose
    cfg = ExportConfig(resolution=48, threshold=50.0, vertex_colors="renders", bake_views=8)
    mesh, _, _ = extract_mesh(scene, cfg, CameraConfig(), "cpu")
    rgb = mesh.visual.vertex_colors[:, :3] / 255.0
    x = mesh.vertices[:, 0]
    assert (np.abs(rgb[x > 0.05] - [1, 0, 0]).max(-1) < 0.1).mean() > 0.98
    assert (np.abs(rgb[x < -0.05] - [0, 0, 1]).max(-1) < 0.1).mean() > 0.98


def test_vertex_colours_default_to_renders_for_every_scene():
    from sds3d.export import ExportConfig, extract_mesh
    from sds3d.scenes.gaussians import GaussiansConfig

    def colours(scene, mode, threshold):
        cfg = ExportConfig(resolution=32, threshold=threshold, bake_views=4, vertex_colors=mode, render_resolution=64)
        return extract_mesh(scene, cfg, CameraConfig(), "cpu")[0].visual.vertex_colors

    assert ExportConfig().vertex_colors == "renders"
    torch.manual_seed(0)
    gaussians = GaussiansConfig(num_init=512, init_opacity=0.5, init_scale=0.08).setup(torch.device("cpu"))
    renders = colours(gaussians, "renders", 0.5)
    np.testing.assert_array_equal(colours(gaussians, "auto", 0.5), renders)  # older runs' name
    assert np.abs(renders.astype(int) - colours(gaussians, "albedo", 0.5).astype(int)).max() > 0
    sphere = RedBlueSphere(albedo_fn=lambda p: GREEN.expand(len(p), 3))  # renders red/blue, albedo green
    rgb = colours(sphere, "renders", 50.0)[:, :3].astype(int)
    assert (rgb[:, 1] < 100).mean() > 0.9  # what the renders show, not the (green) albedo field
    assert (colours(sphere, "albedo", 50.0)[:, 1] > 200).all()
