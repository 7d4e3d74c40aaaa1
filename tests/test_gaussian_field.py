"""The Gaussian field helpers used by the export (sds3d.scenes.gaussian_field)."""

from __future__ import annotations

import numpy as np
import torch

from sds3d.scenes.gaussian_field import splat_bounds


def test_bounds_of_gaussian_scene():
    splats = {
        "means": torch.tensor([[0.2, 0.0, 0.0], [-0.1, 0.3, 0.0], [5.0, 5.0, 5.0]]),
        "scales": torch.log(torch.full((3, 3), 0.01)),
        "quats": torch.tensor([[1.0, 0, 0, 0]] * 3),
        "opacities": torch.tensor([2.0, 2.0, -20.0]),  # the far one is transparent
    }

    lo, hi = splat_bounds(splats)
    np.testing.assert_allclose(lo, [-0.13, -0.03, -0.03], atol=1e-6)
    np.testing.assert_allclose(hi, [0.23, 0.33, 0.03], atol=1e-6)
