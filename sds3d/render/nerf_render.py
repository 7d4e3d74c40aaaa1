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
  middle otherwise; ``nerfacc.render_weight_from_density`` and ``accumulate_along_rays`` in
  their batched (dense) form, which run on the CPU. Optionally samples in empty cells of an
  occupancy grid (grown by one cell) are skipped (density 0), without nerfacc's CUDA-only
  marching.
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
    weights: Tensor,
    t_sample: Tensor,
    rgbs: Tensor,
    normals: Tensor | None,
    dirs: Tensor,
    ray_indices: Tensor | None,
    n_rays: int,
) -> RayBundleOutput:
    """Accumulate per-sample values; dense ([R,S]) when ``ray_indices`` is None, else packed."""
    acc = lambda values: nerfacc.accumulate_along_rays(weights, values, ray_indices=ray_indices, n_rays=n_rays)  # noqa: E731
    opacity = acc(None)
    rgb = acc(rgbs)
    depth = acc(t_sample[..., None]) / opacity.clamp_min(1e-6)
    if normals is None:
        normal = torch.zeros(n_rays, 3, device=weights.device, dtype=weights.dtype)
        orientation = torch.zeros(n_rays, 1, device=weights.device, dtype=weights.dtype)
    else:
        normal = acc(normals)
        d = dirs[ray_indices] if ray_indices is not None else dirs[:, None, :]
        facing_away = (normals * d).sum(-1, keepdim=True).clamp_min(0) ** 2
        orientation = acc(facing_away)
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
    """Dense ``[rays, samples]`` rendering; works on every device.

    ``occupied(points [N,3]) -> bool [N]``, if given, skips the field at the other samples
    (their density is 0): an occupancy grid's empty-space skipping without packed kernels.
    """
    n_rays = origins.shape[0]
    t_starts, t_ends, t_sample = dense_intervals(origins, dirs, radius, num_samples, stratified)
    points = (origins[:, None, :] + t_sample[..., None] * dirs[:, None, :]).reshape(-1, 3)
    ray_indices = torch.arange(n_rays, device=origins.device).repeat_interleave(num_samples)
    if occupied is None:
        sigmas, rgbs, normals = field_fn(points, ray_indices)
        queried = points.shape[0]
    else:
        keep = occupied(points).nonzero()[:, 0]
        s_k, c_k, n_k = field_fn(points[keep], ray_indices[keep])
        sigmas = points.new_zeros(points.shape[0]).index_put((keep,), s_k)
        rgbs = points.new_zeros(points.shape[0], 3).index_put((keep,), c_k)
        normals = None if n_k is None else points.new_zeros(points.shape[0], 3).index_put((keep,), n_k)
        queried = int(keep.numel())
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas.reshape(n_rays, num_samples))
    normals = None if normals is None else normals.reshape(n_rays, num_samples, 3)
    out = _composite(weights, t_sample, rgbs.reshape(n_rays, num_samples, 3), normals, dirs, None, n_rays)
    out.num_samples = queried
    return out


def occupancy_lookup(estimator: nerfacc.OccGridEstimator, points: Tensor, dilate: int = 1) -> Tensor:
    """bool [N]: is the cell of each point, or one within ``dilate`` cells, occupied (level 0).

    The grid update tests one random point per cell, so it misses cells where the density
    varies fast; growing the occupied region by a cell keeps the skipped samples' share of
    the opacity small.
    """
    grid = estimator.binaries[0]
    if dilate > 0:
        k = 2 * dilate + 1
        grid = torch.nn.functional.max_pool3d(grid[None, None].float(), k, stride=1, padding=dilate)[0, 0] > 0
    aabb = estimator.aabbs[0]
    res = estimator.resolution.to(points.device)
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
