"""Surface extraction: gaps closed before marching cubes, and Gaussian spheres (opaque and fuzzy)
that export as one closed genus-0 piece of the right size."""

from __future__ import annotations

import math

import numpy as np
import torch

from sds3d.cameras import CameraConfig
from sds3d.export import ExportConfig, extract_mesh
from sds3d.export.cleanup import count_pieces
from sds3d.export.marching import close_gaps, marching_cubes
from sds3d.render.torch_rasterizer import SH_C0
from sds3d.scenes.gaussians import GaussianScene, GaussiansConfig

CAMS = CameraConfig()


def ball_with_tunnel_and_notch(n: int = 48) -> np.ndarray:
    """Density grid: a ball of radius 18 voxels, drilled through by a 2-voxel-wide tunnel along z,
    with a 12-voxel-wide notch cut into its side (a concavity the closing must keep)."""
    i = np.arange(n) - (n - 1) / 2
    x, y, z = np.meshgrid(i, i, i, indexing="ij")
    inside = x**2 + y**2 + z**2 <= 18**2
    tunnel = (np.abs(x) <= 1) & (np.abs(y) <= 1)
    notch = (x > 8) & (np.abs(y) <= 6) & (np.abs(z) <= 6)
    return np.where(inside & ~tunnel & ~notch, 2.0, 0.0).astype(np.float32)


def test_close_gaps_fills_a_tunnel_and_keeps_a_wide_notch() -> None:
    grid = ball_with_tunnel_and_notch()
    origin, voxel = np.zeros(3), 1.0
    porous = marching_cubes(grid, 1.0, origin, voxel)
    assert porous.euler_number == 0  # a torus: the tunnel makes genus 1
    closed = close_gaps(grid, 1.0, radius_voxels=3.0)
    mesh = marching_cubes(closed, 1.0, origin, voxel)
    assert mesh.euler_number == 2 and count_pieces(mesh) == 1  # genus 0
    c = (np.array(grid.shape) - 1) / 2
    assert closed[int(c[0]), int(c[1]), int(c[2])] >= 1.5  # the tunnel's centre is filled
    assert closed[int(c[0]) + 14, int(c[1]), int(c[2])] == 0.0  # the notch (12 wide > 2r) stays empty
    assert np.array_equal(closed[grid > 1.0], grid[grid > 1.0])  # occupied voxels keep their density
    # radius 0: only enclosed cavities are filled
    hollow = grid.copy()
    hollow[16:21, 16:21, 14:19] = 0.0  # a cavity inside the ball, away from the tunnel and the notch
    filled = close_gaps(hollow, 1.0, 0.0)
    assert (filled[16:21, 16:21, 14:19] >= 1.5).all() and (filled[23, 23] == 0.0).all()  # the tunnel stays open


def gaussian_ball(radius: float, n: int, opacity: float, scale: float, jitter: float, seed: int) -> GaussianScene:
    """Gaussians uniform in a ball (one colour), each of the given opacity and size."""
    gen = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    means = dirs * radius * torch.rand(n, 1, generator=gen) ** (1 / 3)
    scales = scale * (1 + jitter * (torch.rand(n, 3, generator=gen) - 0.5))
    splats = {
        "means": means,
        "scales": scales.log(),
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
        "opacities": torch.full((n,), math.log(opacity / (1 - opacity))),
        "sh0": torch.full((n, 1, 3), (0.7 - 0.5) / SH_C0),
        "shN": torch.zeros(n, 0, 3),
    }
    return GaussianScene(GaussiansConfig(num_init=n, max_gaussians=n), torch.device("cpu"), splats=splats)


def ball_mesh(scene: GaussianScene, close_radius: float):
    cfg = ExportConfig(resolution=48, eval_views=0, eval_resolution=64, turntable=False, splat_ply=False,
                       bake_views=12, close_radius=close_radius)  # fmt: skip
    return extract_mesh(scene, cfg, CAMS, "cpu")


def check_closed_ball(mesh, iou: float) -> None:
    assert count_pieces(mesh) == 1 and mesh.is_watertight and mesh.euler_number == 2  # one closed genus-0 piece
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert 0.44 < np.median(radii) < 0.6 and iou > 0.95  # the ball's surface, where its renders are opaque
    assert abs(np.median(mesh.visual.vertex_colors[:, :3] / 255.0) - 0.7) < 0.03  # colour from the renders


def test_opaque_gaussian_ball_exports_one_closed_genus0_piece() -> None:
    mesh, _, iou = ball_mesh(gaussian_ball(0.5, 800, opacity=0.95, scale=0.06, jitter=0.2, seed=0), ExportConfig.close_radius)
    check_closed_ball(mesh, iou)


def test_fuzzy_gaussian_ball_is_porous_until_its_gaps_are_closed() -> None:
    """Faint Gaussians of mixed sizes: the renders are an opaque ball, the density's level set a sponge."""
    scene = gaussian_ball(0.5, 600, opacity=0.5, scale=0.035, jitter=1.0, seed=0)
    porous, _, _ = ball_mesh(scene, 0.0)
    assert porous.euler_number < -50  # dozens of tunnels
    mesh, _, iou = ball_mesh(scene, 0.08)
    check_closed_ball(mesh, iou)
