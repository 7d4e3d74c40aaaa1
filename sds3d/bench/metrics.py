"""Quality metrics of the exemplar benchmark: PSNR, mask IoU, Chamfer distance, Janus score.

The first three are :mod:`sds3d.metrics` with the benchmark's conventions (a 100 dB cap, the
Chamfer distance relative to the true mesh's size); the Janus score is the benchmark's own.

* ``psnr(a, b, mask)`` = ``10 log10(1 / MSE)`` for images in [0, 1]; with a mask the MSE is over
  the masked pixels only (all channels). The MSE is floored at 1e-10, so identical images give
  a finite 100 dB.
* ``mask_iou`` = ``|A & B| / |A | B|`` of the thresholded alphas (1 when both are empty).
* ``chamfer(mesh, true_mesh)`` = ``0.5 (mean_a min_b |a - b| + mean_b min_a |b - a|) / diag``:
  the symmetric mean nearest-neighbour distance (Euclidean, not squared) between ``n``
  area-uniform surface samples of each mesh (``scipy.spatial.cKDTree``), as a fraction of the
  TRUE mesh's bounding-box diagonal ``diag``. NaN when either mesh has no faces.
* ``janus_score(render_back, true_front, true_back)`` = ``mean_i [PSNR(r_i, F_i) - PSNR(r_i, K_i)]``
  over views ``i``: ``r_i`` the generated object's render from a back camera (azimuth ~180),
  ``F_i`` the true object seen from the mirrored front camera (azimuth ~0, same elevation) and
  ``K_i`` the true object from the same back camera. Positive: the back looks more like the
  true front than like the true back (a Janus object, a face on both sides); negative: a
  faithful back. Objects without a distinct front (``F ~ K``) score about 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import trimesh
from torch import Tensor

from sds3d import metrics

MSE_FLOOR = 1e-10
"""MSE floor: PSNR is capped at 100 dB."""


def psnr(a: Tensor, b: Tensor, mask: Tensor | None = None) -> float:
    """PSNR in dB of images [..., H, W, C] in [0,1]; ``mask`` [..., H, W, 1] selects pixels
    (:func:`sds3d.metrics.psnr` with the MSE floored at ``MSE_FLOOR``)."""
    return metrics.psnr(a, b, mask, floor=MSE_FLOOR)


def mask_iou(alpha_a: Tensor, alpha_b: Tensor, threshold: float = 0.5) -> float:
    """Intersection over union of ``alpha > threshold`` (1.0 when both masks are empty)."""
    return metrics.mask_iou(alpha_a, alpha_b, threshold)


def chamfer(mesh_a: trimesh.Trimesh, mesh_b: trimesh.Trimesh, n: int = 20000, seed: int = 0) -> float:
    """Symmetric mean surface distance between ``mesh_a`` and the true mesh ``mesh_b``, as a
    fraction of ``mesh_b``'s bounding-box diagonal (NaN if a mesh is empty)."""
    if len(mesh_a.faces) == 0 or len(mesh_b.faces) == 0:
        return math.nan
    diag = float(np.linalg.norm(mesh_b.bounds[1] - mesh_b.bounds[0]))
    return metrics.chamfer_distance(mesh_a, mesh_b, n, seed) / diag


def janus_score(render_back: Tensor, true_front: Tensor, true_back: Tensor) -> float:
    """Mean over views of PSNR(render_back, true_front) - PSNR(render_back, true_back)
    (images [N,H,W,3] in [0,1]; positive means Janus). See the module docstring."""
    if not render_back.shape == true_front.shape == true_back.shape:
        raise ValueError("janus_score: the three image batches must have the same shape")
    scores = [psnr(r, f) - psnr(r, k) for r, f, k in zip(render_back, true_front, true_back)]
    return float(torch.tensor(scores).mean())
