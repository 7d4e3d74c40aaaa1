"""Axes of the splat .ply: rotating a Gaussian scene (means, quaternions, SH coefficients) rigidly.

Our world is +z up, front +x. The conventions a ``gaussians.ply`` can be written in (rows of
``SPLAT_AXES[name]`` give the file's x, y, z in our coordinates):

* ``y-down``: x right, y down, z forward, the OpenCV / COLMAP convention that most 3DGS
  scenes are trained in and that Niantic's spz tools call "RDF, typical for PLY". File
  (x, y, z) = ours (-y, -z, x): our up +z is the file's -y. SuperSplat / PlayCanvas turn
  every splat .ply by 180 degrees about z on load (so -y shows up), Spark examples by 180 about
  x; @mkkellogg/gaussian-splats-3d needs ``cameraUp: [0, -1, 0]`` (its demos use such up vectors).
  It equals the glTF axes below turned 180 degrees about z, so SuperSplat shows it like mesh.glb.
* ``y-up``: glTF / three.js axes, like ``mesh.glb``: file (x, y, z) = ours (y, z, x).
* ``z-up``: our native world axes.

A rigid rotation ``R`` of the scene maps a Gaussian (mu, q, s, o, c(d)) to
(R mu, q_R * q, s, o, c(R^T d)): positions rotate, the orientation quaternion (wxyz) is
left-multiplied by R's quaternion (Hamilton product; the norm of the raw quaternion is kept),
scales and opacities stay, and the view-dependent colour must take the same value along the
rotated view direction. With the real SH basis Y_l (2l+1 functions of degree l, exactly the
ones 3DGS/gsplat evaluate, :func:`sds3d.render.torch_rasterizer.eval_sh`), each band mixes only
within itself: sum_m c'_m Y_lm(d) = sum_m c_m Y_lm(R^T d) for all d, i.e. c' = D_l c with
Y_l(d) D_l = Y_l(R^T d), the real Wigner D-matrix, solved here by least squares on 128 Fibonacci
directions (exact for these band-limited functions: the residual is at float64 round-off).
The DC term (l = 0) is rotation invariant.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping

import numpy as np
import torch
from torch import Tensor

from sds3d.render.torch_rasterizer import eval_sh
from sds3d.types import SDS3DError

SplatAxes = Literal["y-down", "y-up", "z-up"]

SPLAT_AXES: dict[str, np.ndarray] = {
    "y-down": np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]),
    "y-up": np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]),
    "z-up": np.eye(3),
}
"""Rotation matrices ours -> file (file coordinates = R @ ours)."""


def axes_rotation(axes: str) -> np.ndarray:
    if axes not in SPLAT_AXES:
        raise SDS3DError(f"unknown splat axes {axes!r}; use one of {', '.join(SPLAT_AXES)}")
    return SPLAT_AXES[axes]


def matrix_to_quat(rot: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion wxyz (Shepperd's method, largest pivot)."""
    m = np.asarray(rot, dtype=np.float64)
    tr = np.trace(m)
    pivots = [tr, m[0, 0], m[1, 1], m[2, 2]]
    k = int(np.argmax(pivots))
    if k == 0:
        w = math.sqrt(1 + tr) / 2
        q = [w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w), (m[1, 0] - m[0, 1]) / (4 * w)]
    else:
        i, j, l = k - 1, k % 3, (k + 1) % 3
        v = math.sqrt(1 + m[i, i] - m[j, j] - m[l, l]) / 2
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[l, j] - m[j, l]) / (4 * v)
        q[1 + i], q[1 + j], q[1 + l] = v, (m[j, i] + m[i, j]) / (4 * v), (m[l, i] + m[i, l]) / (4 * v)
    q = np.array(q)
    return q / np.linalg.norm(q)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a * b of wxyz quaternions (broadcasting)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def _sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """[M, (degree+1)^2] values of the SH basis functions (as eval_sh orders them) at unit dirs [M,3]."""
    k = (degree + 1) ** 2
    eye = torch.eye(k, dtype=dirs.dtype)[None, :, :, None].expand(len(dirs), k, k, 1)  # one-hot coefficient sets
    return eval_sh(degree, dirs[:, None, :].expand(-1, k, -1), eye.transpose(1, 2))[..., 0]


def sh_rotation(rot: np.ndarray, degree: int) -> list[Tensor]:
    """Real Wigner D-matrices [2l+1, 2l+1] for l = 1..degree: coefficients c' = D_l c of the rotated colour."""
    n = 128
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    dirs = torch.stack([torch.sqrt(1 - z * z) * torch.cos(phi), torch.sqrt(1 - z * z) * torch.sin(phi), z], -1)
    r = torch.as_tensor(rot, dtype=torch.float64)
    y_new, y_old = _sh_basis(dirs, degree), _sh_basis(dirs @ r, degree)  # rows of dirs @ r are R^T d
    mats = []
    for l in range(1, degree + 1):
        band = slice(l * l, (l + 1) * (l + 1))
        mats.append(torch.linalg.lstsq(y_new[:, band], y_old[:, band]).solution)
    return mats


def rotate_splats(splats: Mapping[str, Tensor], rot: np.ndarray) -> dict[str, Tensor]:
    """gsplat-named tensors (means, quats wxyz, shN [N,K,3], ...) of the scene rotated by ``rot`` (module docstring)."""
    rot = np.asarray(rot, dtype=np.float64)
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-9) or np.linalg.det(rot) < 0:
        raise SDS3DError("the splat axes change must be a rotation (orthonormal, det +1)")
    out = dict(splats)
    r64 = torch.as_tensor(rot)
    out["means"] = (splats["means"].double() @ r64.T).to(splats["means"].dtype)
    q_rot = torch.as_tensor(matrix_to_quat(rot))
    out["quats"] = quat_multiply(q_rot, splats["quats"].double()).to(splats["quats"].dtype)
    sh_n = splats.get("shN")
    if sh_n is not None and sh_n.shape[1] > 0:
        degree = int(round(math.sqrt(sh_n.shape[1] + 1))) - 1
        if (degree + 1) ** 2 - 1 != sh_n.shape[1] or degree > 3:
            raise SDS3DError(f"shN has {sh_n.shape[1]} coefficients per channel; expected 3, 8 or 15 (SH degree 1..3)")
        bands = []
        for l, mat in enumerate(sh_rotation(rot, degree), start=1):
            coeffs = sh_n[:, l * l - 1 : (l + 1) * (l + 1) - 1].double()  # shN omits the DC term
            bands.append(torch.einsum("ij,njc->nic", mat, coeffs))
        out["shN"] = torch.cat(bands, 1).to(sh_n.dtype)
    return out
