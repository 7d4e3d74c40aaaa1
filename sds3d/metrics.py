"""Image and surface metrics: the one home of PSNR, mask IoU and the Chamfer distance.

Used by the mesh export (mesh vs scene fidelity, :mod:`sds3d.export.fidelity`) and by the
exemplar benchmark (scene vs true object, :mod:`sds3d.bench.metrics`); adding a metric touches
this file only.

* ``psnr(a, b, mask, floor)`` = ``10 log10(1 / MSE)`` for images in [0, 1]; with a mask the MSE
  is over the masked pixels only (all channels). ``floor`` bounds the MSE from below: 0 (the
  export's default) gives ``inf`` for identical images, the benchmark's 1e-10 caps it at 100 dB.
* ``mask_iou(a, b, level)`` = ``|A & B| / |A | B|`` of ``a > level`` and ``b > level`` (1 when
  both are empty).
* ``chamfer_distance(a, b, points, seed)`` =
  ``0.5 (mean_{p in A} min_{q in B} |p - q| + mean_{q in B} min_{p in A} |q - p|)`` between
  ``points`` area-uniform surface samples of each mesh (``scipy.spatial.cKDTree``), in world
  units (Euclidean, not squared).
"""

from __future__ import annotations

import math

import numpy as np
import trimesh
from scipy.spatial import cKDTree
from torch import Tensor


def psnr(a: Tensor, b: Tensor, mask: Tensor | None = None, floor: float = 0.0) -> float:
    """PSNR in dB of images [..., H, W, C] in [0,1]; ``mask`` [..., H, W, 1] selects pixels;
    the MSE is floored at ``floor`` (0: ``inf`` when identical)."""
    err = (a.detach().float() - b.detach().float()) ** 2
    if mask is None:
        mse = float(err.mean())
    else:
        m = mask.detach().float().expand_as(err)
        total = float(m.sum())
        if total == 0:
            raise ValueError("psnr: the mask selects no pixels")
        mse = float((err * m).sum()) / total
    mse = max(mse, floor)
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def mask_iou(a: Tensor, b: Tensor, level: float = 0.5) -> float:
    """IoU of the masks ``a > level`` and ``b > level`` (1 when both are empty)."""
    ma, mb = a.detach() > level, b.detach() > level
    union = int((ma | mb).sum())
    return 1.0 if union == 0 else int((ma & mb).sum()) / union


def chamfer_distance(a: trimesh.Trimesh, b: trimesh.Trimesh, points: int = 30_000, seed: int = 0) -> float:
    """Symmetric mean Chamfer distance between two surfaces (module docstring), world units."""
    pa = trimesh.sample.sample_surface(a, points, seed=seed)[0]
    pb = trimesh.sample.sample_surface(b, points, seed=seed + 1)[0]
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    return float(0.5 * (np.mean(d_ab) + np.mean(d_ba)))
