"""The surface-extraction comparison bench: depth fusion of a known scene is a closed sphere of the
right size, and the table averages per method."""

from __future__ import annotations

import numpy as np

from sds3d.bench.surfaces import fusion_mesh, markdown
from sds3d.cameras import CameraConfig
from sds3d.export.cleanup import count_pieces
from sds3d.export.marching import scene_bounds
from sds3d.export.texture import sphere_cameras
from tests.test_marching import gaussian_ball


def test_fusion_of_an_opaque_ball_is_a_closed_sphere() -> None:
    scene = gaussian_ball(0.5, 800, opacity=0.95, scale=0.06, jitter=0.2, seed=0)
    lo, hi = scene_bounds(scene)
    mesh = fusion_mesh(scene, sphere_cameras(CameraConfig(), 24, 64), lo, hi, 40)
    assert count_pieces(mesh) == 1 and mesh.is_watertight and mesh.euler_number == 2
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert 0.5 < np.median(radii) < 0.62 and radii.std() < 0.04  # the opaque renders' edge, about r + 1.5 sigma


def test_markdown_averages_each_method() -> None:
    row = dict(prompt="p", psnr=25.0, mask_iou=0.9, pieces=1, euler=2, faces=10, seconds=1.0)
    rows = [{**row, "method": "closed", "psnr_object": 20.0}, {**row, "method": "closed", "psnr_object": 22.0, "pieces": 2},
            {**row, "method": "fusion", "psnr_object": 18.0}]  # fmt: skip
    table = markdown(rows)
    assert "| closed | 21.00 | 20.00 | 25.00 | 0.900 | 1.5 | 2.0 | 1.0 |" in table
    assert "| fusion | 18.00 | 18.00 |" in table
