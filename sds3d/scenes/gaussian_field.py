"""The 3D Gaussians' density and colour fields for export, and the scene's bounds.

For export: ``density(x) = sum_i o_i exp(-0.5 (x - mu_i)^T Sigma_i^-1 (x - mu_i))`` over the
Gaussians within 3 sigma of x (:func:`field_at_points`, which also sums the same weights'
view-independent colours ``0.5 + C0 sh0``); :func:`density_on_grid` fills a whole export grid
with the same density by splatting each Gaussian onto the nodes within its 3-sigma reach;
:func:`splat_bounds` is the 3-sigma box of the visible Gaussians. The scene
(:class:`sds3d.scenes.gaussians.GaussianScene`) calls these with its viewer scales.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import Tensor

from sds3d.render.torch_rasterizer import SH_C0, quat_to_rotmat
from sds3d.types import SDS3DError

ExportParams = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]
"""(centres [N,3], opacities [N], colours [N,3], precisions [N,6], 3-sigma reaches [N])."""


def splat_bounds(splats: Mapping[str, Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """The box (lo [3], hi [3], float64) of the 3-sigma extent of all Gaussians with opacity > 0.5%."""
    with torch.no_grad():
        keep = torch.sigmoid(splats["opacities"].detach().float()) > 0.005
        means = splats["means"].detach().float()[keep]
        radius = 3.0 * torch.exp(splats["scales"].detach().float()[keep]).amax(dim=-1, keepdim=True)
    if len(means) == 0:
        raise SDS3DError("the Gaussian scene has no visible Gaussians: nothing to export; train longer or check the run")
    lo = (means - radius).amin(0).cpu().double().numpy()
    hi = (means + radius).amax(0).cpu().double().numpy()
    return lo, hi


def export_params(splats: Mapping[str, Tensor], scales: Tensor) -> ExportParams:
    """From the splats and their (viewer) scales [N,3] after exp: centres [N,3], opacities [N], colours [N,3], precisions [N,6] and 3-sigma reaches [N].

    The precision ``P = R diag(1/s^2) R^T`` is kept as (P00, P11, P22, 2 P01, 2 P02, 2 P12),
    so ``m2 = d^T P d`` is six products.
    """
    s = splats
    inv = quat_to_rotmat(s["quats"].detach()) / scales[:, None, :]
    P = inv @ inv.transpose(-1, -2)
    prec = torch.stack([P[:, 0, 0], P[:, 1, 1], P[:, 2, 2], 2 * P[:, 0, 1], 2 * P[:, 0, 2], 2 * P[:, 1, 2]], -1)
    rgb = (0.5 + SH_C0 * s["sh0"].detach()[:, 0]).clamp(0, 1)
    return s["means"].detach(), torch.sigmoid(s["opacities"].detach()), rgb, prec, 3 * scales.amax(-1)



@torch.no_grad()
def field_at_points(params: ExportParams, points: Tensor, chunk_pairs: int = 4_000_000, colour: bool = True) -> tuple[Tensor, Tensor | None]:
    """Density [M] and (``colour``) density-weighted colour sum [M,3] at points (3-sigma support).

    Gaussians are binned into a uniform grid of cells half their median 3-sigma reach (by
    their bounding spheres); each point tests only the Gaussians of its cell.
    """
    mu, opac, rgb, prec, reach = params
    points = points.to(mu)
    lo = torch.minimum((mu - reach[:, None]).amin(0), points.amin(0))
    hi = torch.maximum((mu + reach[:, None]).amax(0), points.amax(0))
    # Half-reach cells: a point tests the Gaussians with centres in ~27 reach^3 around it
    # (64 reach^3 with cells of one reach).
    cell = max(float((hi - lo).max()) / 256, 0.5 * float(reach.median()))
    while float(((2 * reach / cell).floor() + 2).pow(3).sum()) > 2e7:  # bound the (cell, Gaussian) pairs
        cell *= 1.5
    dims = ((hi - lo) / cell).floor().long() + 1
    g_lo = ((mu - reach[:, None] - lo) / cell).floor().long().clamp_min(0)
    g_hi = torch.minimum(((mu + reach[:, None] - lo) / cell).floor().long(), dims - 1)
    box = g_hi - g_lo + 1
    counts = box.prod(-1)
    gid = torch.repeat_interleave(torch.arange(len(mu), device=mu.device), counts)
    local = torch.arange(len(gid), device=mu.device) - (torch.cumsum(counts, 0) - counts)[gid]
    bx, by = box[gid, 0], box[gid, 1]
    ix = g_lo[gid, 0] + local % bx
    iy = g_lo[gid, 1] + (local // bx) % by
    iz = g_lo[gid, 2] + local // (bx * by)
    keys = (iz * dims[1] + iy) * dims[0] + ix
    keys, order = torch.sort(keys)
    gid = gid[order]
    p_idx = ((points - lo) / cell).floor().long()
    p_idx = torch.minimum(p_idx.clamp_min(0), dims - 1)
    p_keys = (p_idx[:, 2] * dims[1] + p_idx[:, 1]) * dims[0] + p_idx[:, 0]
    starts = torch.searchsorted(keys, p_keys)
    n_per = torch.searchsorted(keys, p_keys, right=True) - starts
    dens = torch.zeros(len(points), device=mu.device, dtype=mu.dtype)
    col = torch.zeros(len(points), 3, device=mu.device, dtype=mu.dtype) if colour else None
    cum = torch.cumsum(n_per, 0)
    begin = 0
    while begin < len(points):
        budget = (cum[begin] - n_per[begin] + chunk_pairs).reshape(1)
        end = max(int(torch.searchsorted(cum, budget, right=True)), begin + 1)
        n = n_per[begin:end]
        pid = begin + torch.repeat_interleave(torch.arange(end - begin, device=mu.device), n)
        off = torch.arange(len(pid), device=mu.device) - (torch.cumsum(n, 0) - n)[pid - begin]
        g = gid[starts[pid] + off]
        dx, dy, dz = (points[pid] - mu[g]).unbind(-1)
        q = prec[g].unbind(-1)
        m2 = q[0] * dx * dx + q[1] * dy * dy + q[2] * dz * dz + dx * (q[3] * dy + q[4] * dz) + q[5] * dy * dz
        w = torch.where(m2 <= 9.0, opac[g] * torch.exp(-0.5 * m2), torch.zeros_like(m2))
        dens.index_add_(0, pid, w)
        if col is not None:
            col.index_add_(0, pid, w[:, None] * rgb[g])
        begin = end
    return dens, col



@torch.no_grad()
def density_on_grid(params: ExportParams, origin: Tensor, voxel: float, counts: tuple[int, int, int], chunk: int = 4_000_000) -> Tensor:
    """``density`` at the nodes ``origin + voxel * (i, j, k)`` -> [nx, ny, nz] (``GridDensity``).

    Each Gaussian is splatted onto the cube of nodes within its 3-sigma reach of its nearest
    node; Gaussians with cubes of the same size go together, and the quadratic form over a
    cube is a sum of outer products of per-axis offsets (no per-node gathers). On a 30-step
    fog of 4,096 Gaussians the 256^3 grid costs ~1/30 of the point queries (docs/mesh.md).
    """
    mu, opac, _, prec, reach = params
    dims = torch.tensor(counts, device=mu.device)
    origin = origin.to(mu)
    out = torch.zeros(int(dims.prod()), device=mu.device, dtype=mu.dtype)
    half = torch.ceil(reach / voxel).long()
    centre = torch.round((mu - origin) / voxel).long()
    stride = torch.tensor([counts[1] * counts[2], counts[2], 1], device=mu.device)
    X = lambda v: v[:, :, None, None]  # noqa: E731  [G,B] per-axis values -> [G,B,B,B] along x
    Y = lambda v: v[:, None, :, None]  # noqa: E731
    Z = lambda v: v[:, None, None, :]  # noqa: E731
    for b in torch.unique(half).tolist():
        ids = torch.nonzero(half == b).flatten()
        offsets = torch.arange(-b, b + 1, device=mu.device)
        per_batch = max(1, chunk // (2 * b + 1) ** 3)
        for g in ids.split(per_batch):
            nodes = centre[g][:, :, None] + offsets  # [G,3,B] node index along each axis
            d = origin[None, :, None] + voxel * nodes - mu[g][:, :, None]  # [G,3,B] offsets from the centre
            dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
            q = prec[g]
            m2 = (X(q[:, 0, None] * dx * dx) + Y(q[:, 1, None] * dy * dy) + Z(q[:, 2, None] * dz * dz)
                  + X(q[:, 3, None] * dx) * Y(dy) + X(q[:, 4, None] * dx) * Z(dz) + Y(q[:, 5, None] * dy) * Z(dz))
            inside = (nodes >= 0) & (nodes < dims[None, :, None])
            keep = (m2 <= 9.0) & X(inside[:, 0]) & Y(inside[:, 1]) & Z(inside[:, 2])
            w = torch.where(keep, opac[g][:, None, None, None] * torch.exp(-0.5 * m2), torch.zeros_like(m2))
            flat = nodes.clamp(min=0) * stride[None, :, None]
            flat = torch.minimum(flat, ((dims - 1) * stride)[None, :, None])
            index = X(flat[:, 0]) + Y(flat[:, 1]) + Z(flat[:, 2])
            out.index_add_(0, index.reshape(-1), w.reshape(-1))
    return out.reshape(counts)
