"""Refine stage: the linear image model equals the ray-cast renders, and Adam fits known colours."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import trimesh

from sds3d.cameras import CameraConfig, eval_cameras
from sds3d.export import ExportConfig, export_scene
from sds3d.export.fidelity import render_mesh_antialiased
from sds3d.export.refine import linear_model, refine_cameras, refine_on_cameras
from sds3d.types import RenderOutput, SDS3DError

CAMS = CameraConfig()


def coloured_sphere(colour_fn) -> trimesh.Trimesh:
    """Icosphere r = 0.5 with vertex colours ``colour_fn(vertices) -> [V,3]`` in [0,1]."""
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    rgb = np.clip(colour_fn(np.asarray(mesh.vertices)), 0.0, 1.0)
    rgba = np.concatenate([np.round(rgb * 255), np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
    return mesh


def truth_colours(v: np.ndarray) -> np.ndarray:
    """Red-green in x, blue in z: smooth enough for vertex colours to hold exactly."""
    return np.stack([0.5 + v[:, 0], 0.5 - v[:, 0], 0.5 + v[:, 2]], axis=1)


class MeshScene:
    """A 'scene' whose renders are the anti-aliased ray casts of a coloured mesh (the truth)."""

    volume_density = False

    def __init__(self, mesh: trimesh.Trimesh):
        self.mesh = mesh

    def bounds(self):
        return np.full(3, -0.6), np.full(3, 0.6)

    def eval_mode(self):
        return contextlib.nullcontext()

    def render(self, cameras, background) -> RenderOutput:
        rgb, alpha = render_mesh_antialiased(self.mesh, cameras, 2)
        return RenderOutput(rgb=rgb, alpha=alpha, depth=torch.zeros_like(alpha))

    def density(self, points):
        return (points.norm(dim=-1) < 0.5).float() * 100.0


def test_linear_model_reproduces_the_ray_cast_render():
    mesh = coloured_sphere(truth_colours)
    cams = eval_cameras(CAMS, 3, 48, 48)
    A, coverage, x0 = linear_model(mesh, cams, 2)
    model = (A @ x0 + (1.0 - coverage)[:, None]).reshape(3, 48, 48, 3)
    rgb, alpha = render_mesh_antialiased(mesh, cams, 2)
    assert np.abs(coverage.reshape(3, 48, 48) - alpha[..., 0].numpy()).max() < 1e-6
    assert np.abs(model - rgb.numpy()).max() < 1e-5  # the same image, computed as A X + background
    assert x0.shape == (len(mesh.vertices), 3)


def test_refine_recovers_known_colours_on_unseen_views():
    truth = coloured_sphere(truth_colours)
    start = coloured_sphere(lambda v: np.full((len(v), 3), 0.5))  # same surface, all grey
    scene = MeshScene(truth)
    result = refine_on_cameras(start, scene, refine_cameras(CAMS, 12, 48), steps=300)
    assert result.psnr_after > result.psnr_before + 15.0 and result.psnr_after > 35.0, result

    # judged on the evaluation orbit, which the refine views never include
    eval_cams = eval_cameras(CAMS, 4, 64, 64)
    target, _ = render_mesh_antialiased(truth, eval_cams, 2)
    psnr = lambda m: -10 * math.log10(float(((render_mesh_antialiased(m, eval_cams, 2)[0] - target) ** 2).mean()))  # noqa: E731
    assert psnr(result.mesh) > psnr(start) + 15.0 and psnr(result.mesh) > 35.0
    assert np.array_equal(result.mesh.vertices, start.vertices)  # geometry untouched


def test_refine_cameras_cover_the_training_band_off_the_evaluation_orbit():
    eval_cams = eval_cameras(CAMS, 8, 64, 64)
    cams = refine_cameras(CAMS, 32, 64, avoid=eval_cams)
    c2w = cams.c2w()[:, :3, 3]
    el = torch.rad2deg(torch.asin(c2w[:, 2] / c2w.norm(dim=-1)))
    lo, hi = CAMS.elevation_range
    assert lo <= float(el.min()) and float(el.max()) <= hi and float(el.max() - el.min()) > 0.8 * (hi - lo)
    dirs = torch.nn.functional.normalize(c2w, dim=-1)
    eval_dirs = torch.nn.functional.normalize(eval_cams.c2w()[:, :3, 3], dim=-1)
    angle = torch.rad2deg(torch.acos((dirs @ eval_dirs.T).clamp(-1, 1)))
    assert float(angle.min()) >= 4.99  # no refine view is (near) an evaluation view
    plain = refine_cameras(CAMS, 32, 64).c2w()[:, :3, 3]
    plain_angle = torch.rad2deg(torch.acos((torch.nn.functional.normalize(plain, dim=-1) @ eval_dirs.T).clamp(-1, 1)))
    assert float(plain_angle.min()) < 4.0  # without avoid the lattice does pass next to one (so the test bites)


def test_export_refines_and_records_it(tmp_path):
    truth = coloured_sphere(truth_colours)
    cfg = ExportConfig(formats=("ply",), resolution=32, threshold=50.0, eval_views=4, eval_resolution=48,
                       turntable=False, splat_ply=False, bake_views=6, refine_views=8)  # fmt: skip
    scene = MeshScene(truth)
    scene.albedo = lambda p: torch.full((len(p), 3), 0.5)
    refined = export_scene(scene, tmp_path / "on", cfg, CAMS, "cpu")
    plain = export_scene(scene, tmp_path / "off", ExportConfig(**{**cfg.__dict__, "refine_steps": 0}), CAMS, "cpu")
    assert refined.refine["psnr_after"] > refined.refine["psnr_before"] and not plain.refine
    assert refined.fidelity["psnr_object"] > plain.fidelity["psnr_object"]
    assert refined.summary()["refine"]["psnr_after"] == pytest.approx(refined.refine["psnr_after"], abs=1e-3)
    with pytest.raises(SDS3DError, match="refine-steps"):
        ExportConfig(refine_steps=-1)


def test_textured_export_refines_the_texture_and_reports_the_surface_topology(tmp_path):
    truth = coloured_sphere(truth_colours)
    scene = MeshScene(truth)
    cfg = ExportConfig(formats=("glb",), resolution=32, threshold=50.0, eval_views=4, eval_resolution=48, turntable=False,
                       splat_ply=False, bake_views=6, refine_views=8, texture=True, texture_size=64)  # fmt: skip
    result = export_scene(scene, tmp_path, cfg, CAMS, "cpu")
    assert (result.pieces, result.euler) == (1, 2)  # one sphere, though UV seams split the textured copy's vertices
    assert result.refine["psnr_after"] > result.refine["psnr_before"]
    assert result.fidelity["psnr_object"] > 20.0
