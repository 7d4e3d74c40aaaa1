"""Mesh export: analytic densities through a fake scene -> marching cubes, threshold, cleanup, files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh

from sds3d.cameras import CameraConfig
from sds3d.export import ExportConfig, export_scene, extract_mesh
from sds3d.export.cleanup import clean_mesh, decimate
from sds3d.export.marching import auto_threshold, density_grid, marching_cubes, scene_bounds, silhouette_threshold
from sds3d.export.turntable import ffmpeg_available
from sds3d.export.writers import OURS_TO_GLTF, read_mesh, write_mesh
from sds3d.types import RenderOutput, SDS3DError

CAMS = CameraConfig()


class AnalyticScene:
    """A Scene from density/albedo functions, rendered by numerical volume rendering (like a NeRF)."""

    volume_density = True  # rendered by volume rendering its density

    def __init__(self, density_fn, albedo_fn, aabb=None, samples: int = 128, extent: float = 0.8):
        self.density_fn, self.albedo_fn, self.samples, self.extent = density_fn, albedo_fn, samples, extent
        self.aabb = np.array([[-1.0] * 3, [1.0] * 3] if aabb is None else aabb, dtype=np.float64)

    def bounds(self):
        return self.aabb[0], self.aabb[1]

    def eval_mode(self):
        return contextlib.nullcontext()

    def density(self, points):
        return self.density_fn(points)

    def albedo(self, points):
        return self.albedo_fn(points)

    @torch.no_grad()
    def render(self, cameras, background):
        B, H, W = len(cameras), cameras.height, cameras.width
        o, d = cameras.rays()
        o, d = o.reshape(B, -1, 3), d.reshape(B, -1, 3)
        rgb = background[:, None, :].expand(B, H * W, 3).clone()
        alpha, depth = torch.zeros(B, H * W, 1), torch.zeros(B, H * W, 1)
        delta = 2.0 * self.extent / self.samples
        for i in range(B):
            t_mid = -(o[i] * d[i]).sum(-1)  # closest approach to the origin
            hit = torch.nonzero((o[i] + t_mid[:, None] * d[i]).norm(dim=-1) < self.extent)[:, 0]
            t = t_mid[hit, None] - self.extent + delta * (torch.arange(self.samples) + 0.5)  # [R,S]
            p = o[i, hit, None] + t[..., None] * d[i, hit, None]
            sigma = self.density_fn(p.reshape(-1, 3)).reshape(t.shape)
            a = 1.0 - torch.exp(-sigma * delta)
            w = a * torch.cumprod(torch.cat([torch.ones_like(a[:, :1]), 1.0 - a[:, :-1]], -1), -1)
            col = self.albedo_fn(p.reshape(-1, 3)).reshape(p.shape)
            acc = w.sum(-1, keepdim=True)
            rgb[i, hit] = (w[..., None] * col).sum(-2) + (1.0 - acc) * background[i]
            alpha[i, hit], depth[i, hit] = acc, (w * t).sum(-1, keepdim=True)
        shape = (B, H, W)
        return RenderOutput(rgb.reshape(*shape, 3), alpha.reshape(*shape, 1), depth.reshape(*shape, 1))

    def regularization(self, out, step, max_steps):
        return torch.zeros(())

    def pre_backward(self, step, out):
        pass

    def optimizer_step(self, step, out):
        pass

    def num_primitives(self):
        return 0

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def sphere_density(radius=0.5, sigma0=200.0, width=0.01):
    return lambda p: sigma0 * torch.sigmoid((radius - p.norm(dim=-1)) / width)


def smooth_albedo(p):
    return (0.5 + 0.45 * torch.tanh(2.0 * p)).clamp(0, 1)


FAST = dict(resolution=64, eval_views=4, eval_resolution=64, turntable=False, splat_ply=False, vertex_colors="albedo")


def render_surface_radius(profile, lo=0.0, hi=1.0) -> float:
    """Closest-approach distance b at which a ray through the radial density ``profile`` has
    optical depth ln 2 (render alpha 0.5): the silhouette of a radially symmetric scene."""
    s = torch.linspace(-0.8, 0.8, 32_001, dtype=torch.float64)  # the profiles vanish beyond |x| = 0.8
    depth = lambda b: float(torch.trapezoid(profile(torch.sqrt(b * b + s * s)), s))  # noqa: E731
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if depth(mid) > math.log(2.0) else (lo, mid)
    return 0.5 * (lo + hi)


def test_sphere_mesh_matches_truth():
    sigma0 = 200.0
    scene = AnalyticScene(sphere_density(sigma0=sigma0), smooth_albedo, aabb=[[-0.6] * 3, [0.6] * 3])
    # a given level: the level sigma0/2 of this profile is exactly the sphere r = 0.5
    mesh, tau, iou = extract_mesh(scene, ExportConfig(**FAST, threshold=sigma0 / 2), CAMS, "cpu")
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii / 0.5 - 1).max() < 0.02 and tau == sigma0 / 2 and iou is None
    assert mesh.is_watertight and mesh.volume > 0  # outward winding
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.5**3, rel=0.03)
    assert mesh.area == pytest.approx(4 * math.pi * 0.5**2, rel=0.03)
    # vertex colours are the albedo at the vertices
    expected = smooth_albedo(torch.as_tensor(mesh.vertices, dtype=torch.float32)).numpy()
    assert np.abs(mesh.visual.vertex_colors[:, :3] / 255.0 - expected).max() < 0.01
    # automatic level: the surface the renders show (alpha 0.5), a little outside 0.5 for this soft edge
    b_star = render_surface_radius(lambda r: sigma0 * torch.sigmoid((0.5 - r) / 0.01))
    mesh, tau, iou = extract_mesh(scene, ExportConfig(**FAST), CAMS, "cpu")
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert 0.5 < b_star < 0.55 and np.abs(radii / b_star - 1).max() < 0.02 and iou > 0.98


def test_box_mesh_matches_truth():
    half = torch.tensor([0.4, 0.3, 0.2])

    def box(p):
        inside = (half - p.abs()).amin(-1)  # signed distance-like, > 0 inside
        return 100.0 * torch.sigmoid(inside / 0.02)  # level 50 is exactly the box

    scene = AnalyticScene(box, smooth_albedo)
    mesh, _, _ = extract_mesh(scene, ExportConfig(**FAST, threshold=50.0), CAMS, "cpu")
    voxel = 2.0 / 63
    np.testing.assert_allclose(mesh.bounds[1], half.numpy(), atol=0.5 * voxel)
    np.testing.assert_allclose(mesh.bounds[0], -half.numpy(), atol=0.5 * voxel)
    assert mesh.volume == pytest.approx(0.8 * 0.6 * 0.4, rel=0.05)


@pytest.mark.parametrize("sigma0", [5.0, 20.0])
def test_auto_threshold_picks_render_surface_of_soft_profile(sigma0):
    # density sigma0 exp(-r^2/s^2): a ray passing at distance b has optical depth
    # sigma0 s sqrt(pi) exp(-b^2/s^2); the render is half opaque (alpha = 0.5) where that is ln 2.
    s = 0.4
    b_star = s * math.sqrt(math.log(sigma0 * s * math.sqrt(math.pi) / math.log(2.0)))
    scene = AnalyticScene(lambda p: sigma0 * torch.exp(-(p**2).sum(-1) / s**2), smooth_albedo, samples=160, extent=1.2)
    mesh, tau, _ = extract_mesh(scene, ExportConfig(**FAST), CAMS, "cpu")
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert radii.mean() == pytest.approx(b_star, rel=0.02)
    assert tau == pytest.approx(sigma0 * math.exp(-(b_star**2) / s**2), rel=0.1)


def test_threshold_from_renders_agrees_with_grid_opacity():
    # the fake renders by volume rendering, like a NeRF: the rendered opacity (used for
    # Gaussians) and the volume-rendered grid (used for NeRF) must pick the same surface
    scene = AnalyticScene(sphere_density(width=0.03), smooth_albedo, aabb=[[-0.7] * 3, [0.7] * 3])
    lo, hi = scene_bounds(scene)
    grid, origin, voxel = density_grid(scene, lo, hi, 64, "cpu")
    radii = {}
    for source in ("render", "grid"):
        tau, iou = auto_threshold(scene, grid, origin, voxel, CAMS, "cpu", source)
        radii[source] = np.linalg.norm(marching_cubes(grid, tau, origin, voxel).vertices, axis=1).mean()
        assert iou > 0.98
    assert radii["render"] == pytest.approx(radii["grid"], rel=0.005)


def test_silhouette_threshold_is_scale_invariant():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(4, 32, 32, generator=g)
    alpha = (m > 0.37).float()
    tau, iou = silhouette_threshold(m, alpha)
    tau_big, _ = silhouette_threshold(m * 1000.0, alpha)
    assert iou > 0.999 and tau_big == pytest.approx(1000.0 * tau, rel=1e-3)
    with pytest.raises(SDS3DError):
        silhouette_threshold(m, torch.zeros_like(alpha))


def test_cleanup_removes_floater_and_fixes_winding():
    big = trimesh.creation.icosphere(4, radius=0.5)  # 5120 faces; the floater has 80 (1.6%)
    small = trimesh.creation.icosphere(1, radius=0.03)
    small.apply_translation([0.9, 0.0, 0.0])
    small.invert()  # inward winding on the floater, fixed or dropped
    big.invert()
    mesh = trimesh.util.concatenate([big, small])
    out = clean_mesh(mesh, min_component_fraction=0.02, face_budget=100_000)
    assert len(out.faces) == len(big.faces)
    assert np.linalg.norm(out.vertices, axis=1).max() < 0.51
    assert out.volume > 0  # outward again


def test_cleanup_drops_parts_hidden_inside_another_and_keeps_visible_parts():
    body = trimesh.creation.icosphere(4, radius=0.5)  # 5120 faces
    inner = trimesh.creation.icosphere(3, radius=0.2)  # 1280 faces (25%), wholly inside the body
    inner.apply_translation([0.1, 0.0, 0.0])
    head = trimesh.creation.icosphere(3, radius=0.2)  # same size, outside: a visible part
    head.apply_translation([0.0, 0.0, 0.8])
    out = clean_mesh(trimesh.util.concatenate([body, inner, head]), min_component_fraction=0.02, face_budget=100_000)
    parts = sorted(out.split(only_watertight=False), key=lambda m: -len(m.faces))
    assert [len(m.faces) for m in parts] == [5120, 1280]
    assert parts[1].bounds[0][2] > 0.55  # the head stayed, the hidden sphere went
    # a part that pokes out of the body is visible: kept
    poking = trimesh.creation.icosphere(3, radius=0.2)
    poking.apply_translation([0.45, 0.0, 0.0])
    out = clean_mesh(trimesh.util.concatenate([body, poking]), min_component_fraction=0.02, face_budget=100_000)
    assert len(out.faces) == 5120 + 1280


def test_decimation_respects_budget():
    mesh = trimesh.creation.icosphere(5, radius=0.5)  # 20480 faces
    out = decimate(mesh, 2000)
    assert 1500 <= len(out.faces) <= 2000
    assert np.abs(np.linalg.norm(out.vertices, axis=1) - 0.5).max() < 0.01
    assert decimate(mesh, 50_000) is mesh


def test_cleanup_keeps_a_decimated_bumpy_surface_in_one_piece():
    """Quadric decimation of a bumpy marching-cubes surface splits two-face slivers off (7 here
    at a tenth of the faces); the cleanup drops them, so the surface stays one piece."""
    from scipy.ndimage import gaussian_filter

    from sds3d.export.cleanup import count_pieces

    n = 96
    x = np.linspace(-1, 1, n)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    noise = gaussian_filter(np.random.default_rng(0).standard_normal((n, n, n)), 2.0)
    field = 0.7 - np.sqrt(X**2 + Y**2 + Z**2) + 0.08 * noise / noise.std()
    mesh = clean_mesh(marching_cubes(field, 0.0, np.array([-1.0, -1.0, -1.0]), 2 / (n - 1)), 0.02, 10**7)
    assert count_pieces(mesh) == 1 and mesh.is_watertight
    budget = len(mesh.faces) // 10
    bare = decimate(mesh, budget)
    bare.merge_vertices()
    assert count_pieces(bare) > 1  # what the second pass is for
    out = clean_mesh(mesh, 0.02, budget)
    assert count_pieces(out) == 1 and len(out.faces) <= budget
    assert abs(out.volume - mesh.volume) < 0.01 * mesh.volume


def _coloured_mesh():
    mesh = trimesh.creation.icosphere(2, radius=0.5)
    mesh.apply_translation([0.1, 0.0, 0.0])
    rgb = (np.random.default_rng(0).random((len(mesh.vertices), 3)) * 255).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.c_[rgb, np.full(len(rgb), 255, np.uint8)])
    return mesh, rgb


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_round_trip_preserves_vertices_and_colours(tmp_path, fmt):
    mesh, rgb = _coloured_mesh()
    path = write_mesh(mesh, tmp_path, [fmt])[0]  # obj: + mesh.mtl
    back = read_mesh(path)
    assert len(back.vertices) == len(mesh.vertices) and len(back.faces) == len(mesh.faces)
    np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(back.visual.vertex_colors[:, :3], rgb)


def test_gltf_axes_front_is_plus_z(tmp_path):
    mesh, _ = _coloured_mesh()
    front = int(np.argmax(mesh.vertices[:, 0]))  # our +x (front)
    top = int(np.argmax(mesh.vertices[:, 2]))  # our +z (up)
    (glb,) = write_mesh(mesh, tmp_path, ["glb"])
    raw = trimesh.load(glb, force="mesh", process=False)  # as a glTF viewer sees it
    np.testing.assert_allclose(raw.vertices[front], [0.0, 0.0, 0.6], atol=1e-6)  # +x -> glTF +z
    np.testing.assert_allclose(raw.vertices[top], [0.0, 0.5, 0.1], atol=1e-6)  # +z -> glTF +y
    assert np.linalg.det(OURS_TO_GLTF[:3, :3]) == pytest.approx(1.0)
    (ply,) = write_mesh(mesh, tmp_path, ["ply"])
    np.testing.assert_allclose(trimesh.load(ply, process=False).vertices, mesh.vertices, atol=1e-6)  # native axes


def test_write_video_mp4_and_gif_fallback(tmp_path, monkeypatch):
    from sds3d.export import turntable

    frames = torch.rand(6, 17, 20, 3)
    path = turntable.write_video(frames, tmp_path / "t.mp4", fps=10)
    if turntable.ffmpeg_available():
        assert path.suffix == ".mp4" and len(imageio.mimread(path)) == 6
    else:  # no imageio-ffmpeg binary on this machine: the fallback is the only path
        assert path.suffix == ".gif" and len(imageio.mimread(path)) == 6
    monkeypatch.setattr(turntable, "ffmpeg_available", lambda: False)
    gif = turntable.write_video((frames.numpy() * 255).astype(np.uint8), tmp_path / "u.mp4")
    assert gif.suffix == ".gif"
    back = np.stack(imageio.mimread(gif))
    assert back.shape[:3] == (6, 17, 20)


def test_config_errors():
    with pytest.raises(SDS3DError):
        ExportConfig(resolution=4)
    with pytest.raises(SDS3DError):
        ExportConfig(threshold=-1.0)


def test_export_scene_fidelity_and_files(tmp_path):
    scene = AnalyticScene(sphere_density(), smooth_albedo, aabb=[[-0.6] * 3, [0.6] * 3])
    cfg = ExportConfig(formats=("glb", "obj", "ply"), resolution=64, eval_views=4, eval_resolution=64,
                       turntable_frames=4, turntable_resolution=32, render_resolution=64)
    result = export_scene(scene, tmp_path, cfg, CAMS, "cpu")
    names = sorted(p.name for p in result.paths)
    video = "turntable_mesh.mp4" if ffmpeg_available() else "turntable_mesh.gif"
    assert names == ["mesh.glb", "mesh.mtl", "mesh.obj", "mesh.ply", video]
    assert all(p.exists() for p in result.paths)
    assert result.fidelity["psnr"] > 25.0 and result.fidelity["mask_iou"] > 0.9
    summary = json.loads(json.dumps(result.summary()))
    assert summary["faces"] == result.num_faces and summary["threshold_rule"] == "auto"
    glb = read_mesh(tmp_path / "mesh.glb")
    assert len(glb.visual.vertex_colors) == len(glb.vertices)
    ply = trimesh.load(tmp_path / "mesh.ply", process=False)  # the same surface, sRGB colours as written
    np.testing.assert_array_equal(np.sort(glb.visual.vertex_colors[:, 0]), np.sort(ply.visual.vertex_colors[:, 0]))


def test_fidelity_renders_the_mesh_antialiased():
    from sds3d.cameras import eval_cameras
    from sds3d.export.fidelity import render_mesh_antialiased

    sphere = trimesh.creation.icosphere(5, radius=0.5)
    sphere.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(sphere.vertices), 1)).astype(np.uint8)
    cams = eval_cameras(CAMS, 2, 24, 24)
    coverage = {s: render_mesh_antialiased(sphere, cams, s)[1] for s in (1, 4, 16)}
    # one ray per pixel: a hard 0/1 mask; 4x4 rays: fractional alphas along the silhouette
    assert set(coverage[1].unique().tolist()) <= {0.0, 1.0}
    edge = (coverage[4] > 0) & (coverage[4] < 1)
    assert int(edge.sum()) > 20
    # and per pixel much closer to the (nearly exact) 16x16 coverage than the hard mask is
    err = {s: float((coverage[s] - coverage[16]).abs().mean()) for s in (1, 4)}
    assert err[4] < 0.3 * err[1]
    rgb = render_mesh_antialiased(sphere, cams, 4)[0]
    inside = coverage[4][..., 0] == 1
    assert torch.allclose(rgb[inside], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)  # albedo, no shading


def test_gaussian_threshold_follows_the_render_size():
    # gsplat's screen-space filter (eps2d) widens small Gaussians more at low resolution, so a
    # Gaussian scene looks fuller when rendered small: the silhouette rule then picks a lower level
    from sds3d.scenes.gaussians import GaussiansConfig, GaussianScene

    torch.manual_seed(0)
    scene = GaussianScene(GaussiansConfig(num_init=400, init_radius=0.5, init_scale=0.02, init_opacity=0.6), torch.device("cpu"))
    lo, hi = scene_bounds(scene)
    grid, origin, voxel = density_grid(scene, lo, hi, 48, "cpu")
    tau = {r: auto_threshold(scene, grid, origin, voxel, CAMS, "cpu", "render", r)[0] for r in (24, 128)}
    assert tau[24] < 0.8 * tau[128]
    # the threshold views and projected colours use --export.render-resolution, by default the
    # size the fidelity is judged at (--export.eval-resolution)
    base = ExportConfig(resolution=48, eval_views=0, turntable=False, splat_ply=False)
    for cfg, r in ((dataclasses.replace(base, eval_resolution=24), 24), (dataclasses.replace(base, render_resolution=128), 128)):
        assert extract_mesh(scene, cfg, CAMS, "cpu")[1] == pytest.approx(tau[r], rel=1e-6)
    with pytest.raises(SDS3DError, match="render-resolution"):
        ExportConfig(render_resolution=4)
