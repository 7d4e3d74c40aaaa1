"""Multi-resolution hash-grid encoding in pure PyTorch (Instant-NGP).

Instant Neural Graphics Primitives with a Multiresolution Hash Encoding (Mueller et al.,
SIGGRAPH 2022). Level ``l`` (of L) is a grid with ``N_l = floor(N_0 * b^l)`` cells per axis
over the unit cube. A point ``x`` in [0,1]^3 falls in the cell with corner ``c = floor(x N_l)``;
the level's feature is the trilinear interpolation of the F-dimensional table entries of the
cell's 8 vertices ``v``:

    f_l(x) = sum_v  prod_k (1 - |x_k N_l - v_k|)  *  table_l[index_l(v)]

    index_l(v) = v_x + v_y (N_l+1) + v_z (N_l+1)^2          if (N_l+1)^3 <= T  (dense level)
    index_l(v) = (v_x * 1  xor  v_y * 2654435761  xor  v_z * 805459861) mod T   (hashed level)

with T = 2^log2_hashmap_size. The encoding is the concatenation of all levels, [N, L*F].
All levels are computed at once: one index computation and one gather from a single flat
table that holds every level's entries back to back. Finer levels can be switched on
progressively (coarse-to-fine, as in Magic3D/threestudio): disabled levels output zeros.
No tiny-cuda-nn: this runs on any device torch runs on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

_PRIMES = (1, 2654435761, 805459861)


@dataclass(frozen=True)
class HashGridConfig:
    """Multi-resolution hash-grid encoding (Instant-NGP)."""

    n_levels: int = 16
    """Number of resolution levels."""
    features_per_level: int = 2
    """Feature channels stored per table entry."""
    log2_hashmap_size: int = 19
    """Entries per level's table are at most 2^this (finer levels are hashed into it)."""
    base_resolution: int = 16
    """Cells per axis of the coarsest level."""
    per_level_scale: float = 1.4472692
    """Growth factor of the resolution from one level to the next (16 * 1.447^15 = 4096)."""
    init_scale: float = 1e-4
    """Table entries start uniform in [-init_scale, init_scale]."""
    progressive_start_levels: int | None = None
    """Coarse-to-fine: enable only this many levels at step 0 (None: all levels always on)."""
    progressive_interval: int = 500
    """Coarse-to-fine: enable one more level every this many steps."""

    def __post_init__(self) -> None:
        if self.n_levels < 1 or self.features_per_level < 1 or self.base_resolution < 1:
            raise ValueError("--grid: n-levels, features-per-level and base-resolution must be >= 1")
        if self.per_level_scale < 1.0:
            raise ValueError("--grid.per-level-scale must be >= 1 (finer levels are not coarser)")
        if self.progressive_start_levels is not None and not 1 <= self.progressive_start_levels <= self.n_levels:
            raise ValueError("--grid.progressive-start-levels must lie in [1, n-levels] (or None to disable)")
        if self.progressive_interval < 1:
            raise ValueError("--grid.progressive-interval must be >= 1")

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.features_per_level

    def setup(self) -> "HashGrid":
        return HashGrid(self)


class HashGrid(nn.Module):
    """Points [N,3] in [0,1]^3 (clamped) -> features [N, n_levels * features_per_level]."""

    def __init__(self, cfg: HashGridConfig) -> None:
        super().__init__()
        self.cfg = cfg
        max_entries = 2**cfg.log2_hashmap_size
        resolutions, sizes, dense = [], [], []
        for level in range(cfg.n_levels):
            res = int(math.floor(cfg.base_resolution * cfg.per_level_scale**level))
            n_vertices = (res + 1) ** 3
            resolutions.append(res)
            dense.append(n_vertices <= max_entries)
            sizes.append(min(n_vertices, max_entries))
        offsets = [0]
        for s in sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.int64), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        self.register_buffer("dense", torch.tensor(dense, dtype=torch.bool), persistent=False)
        self.n_dense = sum(dense)  # dense levels are the first ones (resolution grows)
        # The 8 cell corners as 0/1 offsets [8,3].
        corners = torch.stack(torch.meshgrid(*[torch.arange(2)] * 3, indexing="ij"), -1).reshape(8, 3)
        self.register_buffer("corners", corners, persistent=False)
        self.register_buffer("primes", torch.tensor(_PRIMES, dtype=torch.int64), persistent=False)
        self.register_buffer("level_mask", torch.ones(cfg.n_levels))
        total = sum(sizes)
        self.table = nn.Parameter(torch.empty(total, cfg.features_per_level).uniform_(-cfg.init_scale, cfg.init_scale))
        self.set_step(0)

    @property
    def output_dim(self) -> int:
        return self.cfg.output_dim

    def enabled_levels(self, step: int) -> int:
        """How many levels are on at ``step`` (coarse-to-fine schedule)."""
        start = self.cfg.progressive_start_levels
        if start is None:
            return self.cfg.n_levels
        return min(self.cfg.n_levels, start + step // self.cfg.progressive_interval)

    def set_step(self, step: int) -> None:
        """Update the level mask from the training step."""
        n = self.enabled_levels(step)
        self.level_mask.copy_((torch.arange(self.cfg.n_levels) < n).to(self.level_mask))

    def vertex_index(self, level: int, vertex: Tensor) -> Tensor:
        """Flat-table row of integer grid vertices [..., 3] of one level (for tests and debugging)."""
        side = int(self.resolutions[level]) + 1
        if bool(self.dense[level]):
            row = vertex[..., 0] + vertex[..., 1] * side + vertex[..., 2] * side * side
        else:
            h = vertex * self.primes
            row = torch.bitwise_xor(torch.bitwise_xor(h[..., 0], h[..., 1]), h[..., 2]) % int(self.sizes[level])
        return row + self.offsets[level]

    def corner_rows(self, cell: Tensor) -> Tensor:
        """Flat-table rows [N,L,8] of the 8 vertices of the cells ``cell`` [N,L,3] (int64)."""
        # Per-axis terms [N,L,3,2] combined by broadcasting into [N,L,2,2,2]. Levels are
        # sorted by resolution, so the dense ones come first; hashed tables have 2^k rows.
        v = torch.stack([cell, cell + 1], -1)
        k = self.n_dense
        side = (self.resolutions[:k] + 1)[None, :, None]
        d = v[:, :k] * torch.stack([torch.ones_like(side), side, side * side], 2)  # x + y s + z s^2
        dense_rows = d[:, :, 0, :, None, None] + d[:, :, 1, None, :, None] + d[:, :, 2, None, None, :]
        h = v[:, k:] * self.primes[None, None, :, None]  # (x p0 ^ y p1 ^ z p2) mod T
        hashed = torch.bitwise_xor(
            torch.bitwise_xor(h[:, :, 0, :, None, None], h[:, :, 1, None, :, None]), h[:, :, 2, None, None, :]
        )
        hashed = torch.bitwise_and(hashed, 2**self.cfg.log2_hashmap_size - 1)  # mod T, T a power of 2
        rows = torch.cat([dense_rows, hashed], 1) + self.offsets[None, :, None, None, None]
        return rows.reshape(cell.shape[0], cell.shape[1], 8)

    def gather(self, rows: Tensor) -> Tensor:
        """Table entries [*rows.shape, F] at ``rows``; differentiable w.r.t. the table.

        A 1-D ``index_select`` of the flattened table: its backward is a serial 1-D
        ``index_add_`` on the CPU (deterministic, and ~7x faster than ``F.embedding``'s).
        """
        f = self.cfg.features_per_level
        flat = (rows[..., None] * f + torch.arange(f, device=rows.device)).reshape(-1)
        return self.table.view(-1).index_select(0, flat).view(*rows.shape, f)

    def forward(self, x: Tensor) -> Tensor:
        """x [N,3] in [0,1]^3 -> [N, L*F]; differentiable w.r.t. x (twice) and the table."""
        return self.encode(x)[0]

    def encode(self, x: Tensor, jacobian: bool = False) -> tuple[Tensor, Tensor | None]:
        """Features [N, L*F] and, if asked, their spatial Jacobian d features / d x [N, 3, L*F].

        Trilinear interpolation as three lerps (x, then y, then z); the Jacobian is the
        same lerps of the corner differences along each axis, times the level resolution,
        computed in closed form (first-order differentiable w.r.t. the table: analytic
        normals need no double backward).
        """
        n, L, f = x.shape[0], self.cfg.n_levels, self.cfg.features_per_level
        x = x.clamp(0.0, 1.0)
        res = self.resolutions.to(x.dtype)  # [L]
        pos = x[:, None, :] * res[None, :, None]  # [N,L,3]
        cell = torch.minimum(pos.detach().floor(), (res - 1)[None, :, None]).long()  # top face: last cell
        frac = pos - cell.to(x.dtype)  # [N,L,3] in [0,1]
        c = self.gather(self.corner_rows(cell)).view(n, L, 2, 2, 2, f)  # corners (x, y, z)
        fx, fy, fz = frac[..., 0, None, None, None], frac[..., 1, None, None], frac[..., 2, None]
        c0, c1 = c.unbind(2)  # unbind, not indexing: one stack in backward, not a zero fill per slice
        cx = torch.lerp(c0, c1, fx)  # [N,L,2,2,F] (y, z)
        cx0, cx1 = cx.unbind(2)
        cxy0, cxy1 = torch.lerp(cx0, cx1, fy).unbind(2)  # [N,L,F] each (z = 0, 1)
        mask = self.level_mask[None, :, None].to(x.dtype)
        out = (torch.lerp(cxy0, cxy1, fz) * mask).reshape(n, L * f)
        if not jacobian:
            return out, None
        scale = res[None, :, None] * mask  # d pos / d x, and the level mask
        ddx0, ddx1 = torch.lerp(*(c1 - c0).unbind(2), fy).unbind(2)  # x differences, lerped in y
        ddy0, ddy1 = (cx1 - cx0).unbind(2)  # y differences [N,L,F] (z = 0, 1)
        grads = [torch.lerp(ddx0, ddx1, fz), torch.lerp(ddy0, ddy1, fz), cxy1 - cxy0]
        return out, torch.stack([g * scale for g in grads], 1).reshape(n, 3, L * f)
