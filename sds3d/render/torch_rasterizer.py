"""Pure-torch, tile-binned EWA splatting that mirrors ``gsplat.rasterization`` (gsplat 1.5.3).

3D Gaussian Splatting (Kerbl et al., SIGGRAPH 2023) with EWA projection (Zwicker et al., 2001).
Everything is differentiable by autograd; no CUDA is needed.

Projection, for camera (R, t, fx, fy, cx, cy) and Gaussian (mu, q, s, o):
    Sigma = R(q) diag(s)^2 R(q)^T,   mu_c = R mu + t = (x, y, z),   Sigma_c = R Sigma R^T
    J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]   (tx, ty: x, y clamped to 1.3x the frustum)
    mu_2d = (fx x/z + cx, fy y/z + cy),   Sigma_2d = J Sigma_c J^T + eps2d I   (0.3 px low-pass)
    conic = Sigma_2d^-1;  radius = ceil(e sqrt(diag Sigma_2d)),  e = min(3.33, sqrt(2 ln(255 o)))
    culled (radius 0) when z outside [near, far], o < 1/255, or its box misses the image.
Colour: post-activation values, or SH of degree 0..3 at the direction mu - camera centre,
    then ``max(sh + 0.5, 0)`` as gsplat does.
Compositing, per pixel p, Gaussians sorted front to back:
    a_i = min(0.999, o_i exp(-0.5 d^T conic d)),  skipped when a_i < 1/255;
    C = sum_i c_i a_i T_i + T bg,  T_i = prod_{j<i} (1 - a_j); stop (exclusive) once T_{i+1} <= 1e-4.

Binning: each Gaussian's box is split into screen tiles, (image, tile, depth) keys are sorted
once, and the tiles are composited together, vectorized over tiles x pixels x a chunk of
depth-sorted Gaussians; a Python loop walks the chunks front to back and drops finished tiles.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sds3d.types import SDS3DError

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat: Gaussians fainter than this at a pixel are skipped
ALPHA_MAX = 0.999  # gsplat's clamp of a single Gaussian's alpha
T_MIN = 1e-4  # a pixel stops once its transmittance would fall to this

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] wxyz (any norm) -> [..., 3, 3] rotation."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, -1).reshape(quats.shape[:-1] + (3, 3))


def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """[N,4], [N,3] -> [N,3,3] world covariance R S S^T R^T."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor, Ks: Tensor,
    width: int, height: int, eps2d: float = 0.3, near_plane: float = 0.01, far_plane: float = 1e10,
    radius_clip: float = 0.0, antialiased: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """EWA projection of N Gaussians into C cameras (gsplat's fully fused projection).

    Returns radii [C,N,2] int32 (0 = culled), means2d [C,N,2], depths [C,N], conics [C,N,3]
    (upper triangle of the inverse 2D covariance) and compensations [C,N] (antialiased only).
    """
    R, t = viewmats[:, None, :3, :3], viewmats[:, None, :3, 3]  # [C,1,3,3], [C,1,3]
    mean_c = (R @ means[None, :, :, None])[..., 0] + t  # [C,N,3]
    cov_c = R @ covariances(quats, scales)[None] @ R.transpose(-1, -2)  # [C,N,3,3]
    x, y, z = mean_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keep culled entries finite
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C,1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z * torch.minimum(lim_x_pos, torch.maximum(-lim_x_neg, x / z))
    ty = z * torch.minimum(lim_y_pos, torch.maximum(-lim_y_neg, y / z))
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / z**2, zero, fy / z, -fy * ty / z**2], -1).reshape(z.shape + (2, 3))
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # [C,N,2,2]
    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    ok = in_depth & (det > 0)
    det = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], -1)
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)

    opac = opacities.detach()[None].expand_as(z)
    compensations = None
    if antialiased:
        compensations = torch.sqrt(torch.clamp(det_orig / det, min=0.0))
        opac = opac * compensations.detach()
    ok = ok & (opac >= ALPHA_THRESHOLD)
    with torch.no_grad():
        extend = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(max=3.33)
        rx = torch.ceil(extend * torch.sqrt(a.clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.clamp_min(0)))
        ok &= (rx > radius_clip) | (ry > radius_clip)
        mx, my = means2d[..., 0], means2d[..., 1]
        ok &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.stack([rx, ry], -1).mul(ok[..., None]).to(torch.int32)
    keep = ok[..., None]
    means2d = torch.where(keep, means2d, torch.zeros_like(means2d))
    conics = torch.where(keep, conics, torch.zeros_like(conics))
    depths = torch.where(ok, mean_c[..., 2], torch.zeros_like(z))
    return radii, means2d, depths, conics, compensations


# Real spherical harmonics constants (Sloan, "Efficient Spherical Harmonic Evaluation", 2013).
SH_C0 = 0.2820947917738781
SH_C1 = 0.48860251190292


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """SH of ``degree`` (0..3) at directions [...,3] (any norm) with coeffs [...,K,3] -> [...,3]."""
    if not 0 <= degree <= 3:
        raise SDS3DError(f"SH degree {degree} is not supported by the torch rasterizer: use 0..3")
    out = SH_C0 * coeffs[..., 0, :]
    if degree == 0:
        return out
    x, y, z = (F.normalize(dirs, dim=-1)[..., i : i + 1] for i in range(3))
    out = out + SH_C1 * (-y * coeffs[..., 1, :] + z * coeffs[..., 2, :] - x * coeffs[..., 3, :])
    if degree == 1:
        return out
    z2, fC1, fS1 = z * z, x * x - y * y, 2 * x * y
    fTmp0B = -1.092548430592079 * z
    bands2 = [0.5462742152960395 * fS1, fTmp0B * y, 0.9461746957575601 * z2 - 0.3153915652525201, fTmp0B * x, 0.5462742152960395 * fC1]
    for i, basis in enumerate(bands2):
        out = out + basis * coeffs[..., 4 + i, :]
    if degree == 2:
        return out
    fTmp0C = -2.285228997322329 * z2 + 0.4570457994644658
    fTmp1B = 1.445305721320277 * z
    fC2, fS2 = x * fC1 - y * fS1, x * fS1 + y * fC1
    bands3 = [
        -0.5900435899266435 * fS2, fTmp1B * fS1, fTmp0C * y, z * (1.865881662950577 * z2 - 1.119528997770346),
        fTmp0C * x, fTmp1B * fC1, -0.5900435899266435 * fC2,
    ]
    for i, basis in enumerate(bands3):
        out = out + basis * coeffs[..., 9 + i, :]
    return out


@torch.no_grad()
def intersect_tiles(
    means2d: Tensor, radii: Tensor, depths: Tensor, image_ids: Tensor, n_images: int,
    tile_size: int, tile_width: int, tile_height: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bin E projected entries (flat [E,2], [E,2], [E], [E]) into tiles, sorted by depth.

    Returns tiles_per_gauss [E] int32, isect_ids [M] int64 (gsplat's key: image | tile | depth
    bits), flatten_ids [M] int64 (entry of each intersection), isect_offsets [I,th,tw] int32.
    """
    dev = means2d.device
    valid = (radii > 0).all(-1)
    r = radii.to(means2d.dtype)
    lo = torch.floor((means2d - r) / tile_size).long()
    hi = torch.ceil((means2d + r) / tile_size).long()
    bound = torch.tensor([tile_width, tile_height], device=dev)
    lo = torch.minimum(lo.clamp_min(0), bound)
    hi = torch.minimum(hi.clamp_min(0), bound)
    box = (hi - lo) * valid[:, None]
    counts = box[:, 0] * box[:, 1]
    entry = torch.repeat_interleave(torch.arange(len(counts), device=dev), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(entry), device=dev) - first[entry]
    bw = box[entry, 0]
    tile_x = lo[entry, 0] + local % bw
    tile_y = lo[entry, 1] + local // bw
    n_tiles = tile_width * tile_height
    tile_bits = n_tiles.bit_length()
    group = image_ids[entry] * n_tiles + tile_y * tile_width + tile_x
    depth_bits = depths.float()[entry].view(torch.int32).long() & 0xFFFFFFFF
    isect_ids = ((image_ids[entry] << tile_bits) | (tile_y * tile_width + tile_x)) << 32 | depth_bits
    isect_ids, order = torch.sort(isect_ids, stable=True)
    flatten_ids = entry[order]
    offsets = torch.searchsorted(group[order], torch.arange(n_images * n_tiles, device=dev))
    return counts.int(), isect_ids, flatten_ids, offsets.int().reshape(n_images, tile_height, tile_width)


def composite_tiles(
    means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, width: int, height: int,
    tile_size: int, isect_offsets: Tensor, flatten_ids: Tensor, backgrounds: Tensor | None = None,
    chunk: int = 64,
) -> tuple[Tensor, Tensor]:
    """Front-to-back alpha compositing of flat entries ([E,2], [E,3], [E,D], [E]) per tile.

    Returns colors [I,H,W,D] and alphas [I,H,W,1]. ``chunk`` Gaussians per tile per iteration.
    """
    I, th, tw = isect_offsets.shape
    G, P, D, ts = I * th * tw, tile_size * tile_size, colors.shape[-1], tile_size
    dev, dt = means2d.device, means2d.dtype
    starts = isect_offsets.reshape(-1).long()
    ends = torch.cat([starts[1:], torch.tensor([len(flatten_ids)], device=dev)])
    counts = ends - starts
    # Pixel centres along x and y of every tile ([G,ts] each): dx only depends on the column
    # and dy on the row, so the quadratic form needs only two full [A,ts,ts,k] products.
    g = torch.arange(G, device=dev)
    local = torch.arange(ts, device=dev)
    px = ((g % tw)[:, None] * ts + local).to(dt) + 0.5
    py = (((g // tw) % th)[:, None] * ts + local).to(dt) + 0.5

    out = torch.zeros(G, P, D, device=dev, dtype=dt)
    T = torch.ones(G, P, device=dev, dtype=dt)
    done = torch.zeros(G, P, device=dev, dtype=torch.bool)
    active = torch.nonzero(counts > 0).flatten()
    n_isects = len(flatten_ids)
    s = 0
    while len(active) > 0:
        A, k = len(active), min(chunk, int(counts[active].max()) - s)
        pos = starts[active, None] + s + torch.arange(k, device=dev)  # [A,k]
        ids = flatten_ids[pos.clamp_max(n_isects - 1)]
        mu, con, col = means2d[ids], conics[ids], colors[ids]  # [A,k,...]
        op = torch.where(pos < ends[active, None], opacities[ids], torch.zeros_like(opacities[ids]))
        dx = mu[:, None, :, 0] - px[active][:, :, None]  # [A,ts(x),k]
        dy = mu[:, None, :, 1] - py[active][:, :, None]  # [A,ts(y),k]
        xx = (con[:, None, :, 0] * dx * dx)[:, None]  # [A,1,ts,k]
        yy = (con[:, None, :, 2] * dy * dy)[:, :, None]  # [A,ts,1,k]
        xy = (con[:, None, :, 1] * dx)[:, None] * dy[:, :, None]  # [A,ts,ts,k]
        sigma = (0.5 * (xx + yy) + xy).reshape(A, P, k)
        alpha = torch.clamp_max(op[:, None, :] * torch.exp(-sigma), ALPHA_MAX)
        T_a = T[active]
        with torch.no_grad():
            valid = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & ~done[active][:, :, None]
        alpha = alpha * valid
        trans = torch.cumprod(1 - alpha, -1)  # [A,P,k] transmittance after each Gaussian / T_a
        with torch.no_grad():
            # Exclusive early stop: T only decreases, so the Gaussians before it form a prefix.
            keep = T_a[:, :, None] * trans > T_MIN
            n_keep = keep.sum(-1, keepdim=True)
            done[active] |= ~keep[..., -1]
        T_before = T_a[:, :, None] * torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], -1)
        weights = alpha * keep * T_before
        out = out.index_add(0, active, torch.bmm(weights, col))
        T_after = T_a * torch.where(n_keep > 0, trans.gather(-1, (n_keep - 1).clamp_min(0)), torch.ones_like(T_a[..., None]))[..., 0]
        T = T.index_copy(0, active, T_after)
        s += k
        active = active[(counts[active] > s) & ~done[active].all(-1)]

    alphas = 1 - T
    if backgrounds is not None:
        img_of_tile = g // (th * tw)
        out = out + T[..., None] * backgrounds[img_of_tile][:, None, :]

    def to_image(v: Tensor) -> Tensor:
        v = v.reshape(I, th, tw, tile_size, tile_size, -1).permute(0, 1, 3, 2, 4, 5)
        return v.reshape(I, th * tile_size, tw * tile_size, -1)[:, :height, :width]

    return to_image(out), to_image(alphas[..., None])


def rasterization(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
    viewmats: Tensor, Ks: Tensor, width: int, height: int,
    near_plane: float = 0.01, far_plane: float = 1e10, radius_clip: float = 0.0, eps2d: float = 0.3,
    sh_degree: int | None = None, packed: bool = True, tile_size: int = 16,
    backgrounds: Tensor | None = None, render_mode: RenderMode = "RGB",
    rasterize_mode: Literal["classic", "antialiased"] = "classic", chunk: int = 64,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Same inputs and outputs as ``gsplat.rasterization`` (pinhole cameras, no batch dims).

    means [N,3], quats [N,4] wxyz, scales [N,3], opacities [N] (all post-activation), colors
    [(C,)N,D] or SH coefficients [(C,)N,K,3] with ``sh_degree``; viewmats [C,4,4], Ks [C,3,3].
    Returns render_colors [C,H,W,D(+1)], render_alphas [C,H,W,1] and gsplat's meta dict
    (``means2d`` keeps its gradient for densification; ``radii`` [C,N,2] or [nnz,2] if packed).
    """
    if means.dim() != 2 or viewmats.dim() != 3:
        raise SDS3DError("the torch rasterizer takes means [N,3] and viewmats [C,4,4] (no batch dims)")
    N, C = means.shape[0], viewmats.shape[0]
    dev = means.device
    radii, means2d, depths, conics, comps = project(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
        radius_clip, antialiased=rasterize_mode == "antialiased",
    )
    opac = opacities[None].expand(C, N)
    if comps is not None:
        opac = opac * comps
    per_camera = colors.dim() == (3 if sh_degree is None else 4)
    if sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C,3]
        dirs = means[None] - campos[:, None]  # [C,N,3]
        coeffs = colors if per_camera else colors[None].expand(C, *colors.shape)
        colors = torch.clamp_min(eval_sh(sh_degree, dirs, coeffs) + 0.5, 0.0)
    elif not per_camera:
        colors = colors[None].expand(C, *colors.shape)

    meta: dict[str, Any] = {"batch_ids": None, "camera_ids": None, "gaussian_ids": None}
    if packed:
        cam_ids, gauss_ids = torch.nonzero((radii > 0).all(-1), as_tuple=True)
        radii, means2d, depths = radii[cam_ids, gauss_ids], means2d[cam_ids, gauss_ids], depths[cam_ids, gauss_ids]
        conics, opac, colors = conics[cam_ids, gauss_ids], opac[cam_ids, gauss_ids], colors[cam_ids, gauss_ids]
        meta.update(batch_ids=torch.zeros_like(cam_ids), camera_ids=cam_ids, gaussian_ids=gauss_ids)
        flat = lambda v: v  # noqa: E731
        image_ids = cam_ids
    else:
        flat = lambda v: v.reshape(C * N, *v.shape[2:])  # noqa: E731
        image_ids = torch.arange(C, device=dev).repeat_interleave(N)
    meta.update(radii=radii, means2d=means2d, depths=depths, conics=conics, opacities=opac)

    if render_mode in ("RGB+D", "RGB+ED"):
        colors = torch.cat([colors, depths[..., None]], -1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, torch.zeros_like(backgrounds[:, :1])], -1)
    elif render_mode in ("D", "ED"):
        colors = depths[..., None]
        if backgrounds is not None:
            backgrounds = torch.zeros_like(backgrounds[:, :1])

    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    tiles_per_gauss, isect_ids, flatten_ids, isect_offsets = intersect_tiles(
        flat(means2d).detach(), flat(radii), flat(depths).detach(), image_ids, C, tile_size, tile_width, tile_height
    )
    meta.update(
        tile_width=tile_width, tile_height=tile_height,
        tiles_per_gauss=tiles_per_gauss if packed else tiles_per_gauss.reshape(C, N),
        isect_ids=isect_ids, flatten_ids=flatten_ids, isect_offsets=isect_offsets,
        width=width, height=height, tile_size=tile_size, n_batches=1, n_cameras=C,
    )
    render_colors, render_alphas = composite_tiles(
        flat(means2d), flat(conics), flat(colors), flat(opac), width, height, tile_size,
        isect_offsets, flatten_ids, backgrounds, chunk,
    )
    if render_mode in ("ED", "RGB+ED"):
        expected = render_colors[..., -1:] / render_alphas.clamp(min=1e-10)
        render_colors = torch.cat([render_colors[..., :-1], expected], -1)
    return render_colors, render_alphas, meta
