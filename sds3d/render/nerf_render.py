"""Volume rendering of a radiance field inside a bounding sphere, with nerfacc.

Quadrature (NeRF, Mildenhall et al. 2020; nerfacc, Li et al. 2023): for the samples
``i`` of a ray with intervals ``[t_i, t_i + delta_i]`` and densities ``sigma_i``,

    alpha_i = 1 - exp(-sigma_i delta_i),   T_i = prod_{j<i} (1 - alpha_j),   w_i = T_i alpha_i
    C = sum_i w_i c_i,   opacity = sum_i w_i,   depth = sum_i w_i t_i / opacity,
    N = sum_i w_i n_i,   orientation = sum_i w_i max(0, n_i . d)^2   (Ref-NeRF / DreamFusion)

Two samplers produce the intervals, both between the ray's entry into and exit from the
sphere ``|x| < radius``:

* dense (any device): ``S`` equal bins per ray, ``[rays, S]`` tensors; the field is queried
  at a uniformly jittered point of each bin when ``stratified`` (training), at the bin's
  middle otherwise; ``nerfacc.render_weight_from_density`` in its batched (dense) form,
  which runs on the CPU. Only samples on rays that cross the
  sphere and, optionally, in occupied cells of an occupancy grid (grown by one cell) are
  queried; the others have density 0, so the transmittance is dense but the field queries
  and the accumulation (``accumulate_along_rays``, packed) cover the queried samples only,
  without nerfacc's CUDA-only marching.
* occupancy grid (CUDA only): ``nerfacc.OccGridEstimator.sampling`` marches with a fixed step
  and skips empty cells and occluded samples; packed samples (``ray_indices``) go through the
  same two nerfacc functions in their packed form.

The field is a callable ``field_fn(points [N,3], ray_indices [N]) -> (sigma [N], rgb [N,3],
normal [N,3] | None)`` (``ray_indices`` index the rays of the call, so the caller can look up
per-ray data such as the light position). Background compositing is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import nerfacc
import torch
from torch import Tensor

FieldFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor | None]]


@dataclass
class RayBundleOutput:
    """Per-ray results (no background): everything is [R, k]."""

    rgb: Tensor  # [R,3] premultiplied colour sum_i w_i c_i
    opacity: Tensor  # [R,1]
    depth: Tensor  # [R,1] expected distance along the ray (0 where empty)
    normal: Tensor  # [R,3] sum_i w_i n_i (zeros when the field gives no normals)
    orientation: Tensor  # [R,1] sum_i w_i max(0, n_i . d)^2
    num_samples: int  # field queries made for these rays

    @staticmethod
    def cat(parts: list["RayBundleOutput"]) -> "RayBundleOutput":
        return RayBundleOutput(
            rgb=torch.cat([p.rgb for p in parts]),
            opacity=torch.cat([p.opacity for p in parts]),
            depth=torch.cat([p.depth for p in parts]),
            normal=torch.cat([p.normal for p in parts]),
            orientation=torch.cat([p.orientation for p in parts]),
            num_samples=sum(p.num_samples for p in parts),
        )


def sphere_bounds(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances [R] of unit-direction rays through the sphere ``|x| < radius``.

    Rays that miss get ``t_near = t_far = 0``; a camera inside the sphere starts at 0.
    """
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius * radius
    disc = b * b - c
    hit = disc > 0
    root = disc.clamp_min(0).sqrt()
    t_near = (-b - root).clamp_min(0)
    t_far = (-b + root).clamp_min(0)
    t_near = torch.where(hit, t_near, torch.zeros_like(t_near))
    t_far = torch.where(hit, t_far, torch.zeros_like(t_far))
    return t_near, t_far


def dense_intervals(
    origins: Tensor, dirs: Tensor, radius: float, num_samples: int, stratified: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Equal bins between sphere entry and exit: t_starts, t_ends, t_sample, each [R, S]."""
    t_near, t_far = sphere_bounds(origins, dirs, radius)
    u = torch.linspace(0.0, 1.0, num_samples + 1, device=origins.device, dtype=origins.dtype)
    edges = t_near[:, None] + (t_far - t_near)[:, None] * u[None, :]
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    if stratified:
        jitter = torch.rand_like(t_starts)
    else:
        jitter = torch.full_like(t_starts, 0.5)
    t_sample = t_starts + (t_ends - t_starts) * jitter
    return t_starts, t_ends, t_sample


def _composite(
    weights: Tensor, t_sample: Tensor, rgbs: Tensor, normals: Tensor | None, dirs: Tensor, ray_indices: Tensor, n_rays: int
) -> RayBundleOutput:
    """Accumulate packed per-sample values [K, ...] onto their rays, in one ``index_add_``."""
    cols = [torch.ones_like(t_sample)[:, None], rgbs, t_sample[:, None]]
    if normals is not None:
        facing_away = (normals * dirs[ray_indices]).sum(-1, keepdim=True).clamp_min(0) ** 2
        cols += [normals, facing_away]
    acc = nerfacc.accumulate_along_rays(weights, torch.cat(cols, -1), ray_indices=ray_indices, n_rays=n_rays)
    opacity, rgb, depth = acc[:, :1], acc[:, 1:4], acc[:, 4:5] / acc[:, :1].clamp_min(1e-6)
    if normals is None:
        normal = torch.zeros(n_rays, 3, device=weights.device, dtype=weights.dtype)
        orientation = torch.zeros(n_rays, 1, device=weights.device, dtype=weights.dtype)
    else:
        normal, orientation = acc[:, 5:8], acc[:, 8:9]
    return RayBundleOutput(rgb, opacity, depth, normal, orientation, int(weights.numel()))


def render_rays_dense(
    field_fn: FieldFn,
    origins: Tensor,
    dirs: Tensor,
    radius: float,
    num_samples: int,
    stratified: bool,
    occupied: Callable[[Tensor], Tensor] | None = None,
) -> RayBundleOutput:
    """Dense ``[rays, samples]`` transmittance; works on every device.

    The field is queried only at samples of rays that cross the sphere and, if
    ``occupied(points [N,3]) -> bool [N]`` is given, that lie in occupied space; the other
    samples have density 0 (weight 0), so compositing only the queried ones is exact.
    """
    n_rays, S = origins.shape[0], num_samples
    t_starts, t_ends, t_sample = dense_intervals(origins, dirs, radius, S, stratified)
    points = (origins[:, None, :] + t_sample[..., None] * dirs[:, None, :]).reshape(-1, 3)
    keep = (t_ends > t_starts).reshape(-1)  # rays that miss the sphere have empty bins
    if occupied is not None:
        keep = keep & occupied(points)
    keep = keep.nonzero()[:, 0]  # sorted: samples of a ray stay in order
    ray_indices = torch.div(keep, S, rounding_mode="floor")
    sigmas, rgbs, normals = field_fn(points.index_select(0, keep), ray_indices)
    dense_sigmas = points.new_zeros(n_rays * S).index_put((keep,), sigmas)
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, dense_sigmas.view(n_rays, S))
    w = weights.reshape(-1).index_select(0, keep)  # backward: a deterministic 1-D index_add_
    return _composite(w, t_sample.reshape(-1).index_select(0, keep), rgbs, normals, dirs, ray_indices, n_rays)


def dilated_occupancy(estimator: nerfacc.OccGridEstimator, dilate: int = 1) -> Tensor:
    """bool [res,res,res]: cells that are occupied or within ``dilate`` cells of one (level 0).

    The grid update tests one random point per cell, so it misses cells where the density
    varies fast; growing the occupied region by a cell keeps the skipped samples' share of
    the opacity small.
    """
    grid = estimator.binaries[0]
    if dilate > 0:
        k = 2 * dilate + 1
        grid = torch.nn.functional.max_pool3d(grid[None, None].float(), k, stride=1, padding=dilate)[0, 0] > 0
    return grid


def occupancy_lookup(grid: Tensor, aabb: Tensor, points: Tensor) -> Tensor:
    """bool [N]: is each point inside ``aabb`` [6] and in an occupied cell of ``grid`` [X,Y,Z]."""
    res = torch.tensor(grid.shape, device=points.device)
    u = (points - aabb[:3]) / (aabb[3:] - aabb[:3])
    inside = ((u >= 0) & (u <= 1)).all(-1)
    cell = torch.minimum((u.clamp(0, 1) * res).long(), res - 1)
    return grid[cell[:, 0], cell[:, 1], cell[:, 2]] & inside


def render_rays_occgrid(
    estimator: nerfacc.OccGridEstimator,
    field_fn: FieldFn,
    sigma_fn: Callable[[Tensor], Tensor],
    origins: Tensor,
    dirs: Tensor,
    radius: float,
    step_size: float,
    alpha_thre: float,
    stratified: bool,
) -> RayBundleOutput:
    """Packed rendering with nerfacc's occupancy-grid marching (CUDA only).

    ``sigma_fn(points [N,3]) -> [N]`` is the density used (without gradient) to drop
    transparent and occluded samples before the differentiable field query.
    """
    n_rays = origins.shape[0]
    origins, dirs = origins.contiguous(), dirs.contiguous()
    t_near, t_far = sphere_bounds(origins, dirs, radius)

    def marching_sigma(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        ri = ray_indices.long()
        t_mid = 0.5 * (t_starts + t_ends)
        return sigma_fn(origins[ri] + t_mid[:, None] * dirs[ri])

    ray_indices, t_starts, t_ends = estimator.sampling(
        origins,
        dirs,
        sigma_fn=marching_sigma,
        t_min=t_near,
        t_max=t_far,
        render_step_size=step_size,
        alpha_thre=alpha_thre,
        stratified=stratified,
    )
    ray_indices = ray_indices.long()
    if ray_indices.numel() == 0:
        z1, z3 = origins.new_zeros(n_rays, 1), origins.new_zeros(n_rays, 3)
        return RayBundleOutput(z3, z1, z1, z3.clone(), z1.clone(), 0)
    t_sample = 0.5 * (t_starts + t_ends)
    points = origins[ray_indices] + t_sample[:, None] * dirs[ray_indices]
    sigmas, rgbs, normals = field_fn(points, ray_indices)
    weights, _, _ = nerfacc.render_weight_from_density(
        t_starts, t_ends, sigmas, ray_indices=ray_indices, n_rays=n_rays
    )
    return _composite(weights, t_sample, rgbs, normals, dirs, ray_indices, n_rays)
