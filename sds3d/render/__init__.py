"""Renderers. ``rasterize_gaussians`` is ``gsplat.rasterization`` with a CPU fallback.

    colors, alphas, meta = rasterize_gaussians(means, quats, scales, opacities, colors,
                                               viewmats, Ks, width, height, backend="auto")

``backend="auto"`` runs gsplat's CUDA kernels when the tensors are on a GPU and the pure-torch
tile rasterizer (:mod:`sds3d.render.torch_rasterizer`) otherwise; both take the same
post-activation inputs and return the same colors, alphas and meta keys, so gsplat's
densification strategies work with either. When the kernels cannot be built or loaded on a
GPU (no CUDA toolkit, a failed build: :mod:`sds3d.render.kernels`), ``auto`` prints one
warning line and runs the torch rasterizer on CUDA; an explicit ``gsplat`` is an error.
The NeRF sampler follows the same rule (:func:`resolve_nerf_sampler`).
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from sds3d.render import torch_rasterizer
from sds3d.render.kernels import kernels_or_fallback, require_kernels
from sds3d.types import SDS3DError

Backend = Literal["auto", "gsplat", "torch"]
TORCH_TILE_SIZE = 4
"""Tile size of the torch backend: small tiles waste fewer pixel tests on a CPU (4 px beat 2, 3,
6 and 8 px at 64 and 128 px renders of 8k Gaussians, forward + backward, 1 and 2 threads; see
docs/benchmarks.md). The image does not depend on it beyond float rounding (every pixel a
Gaussian reaches above 1/255 lies inside its binned box)."""


def resolve_backend(backend: Backend, device_is_cuda: bool) -> Literal["gsplat", "torch"]:
    """``auto`` -> gsplat on CUDA tensors when its kernels load (else one warning line and
    torch), torch elsewhere; ``gsplat`` on CPU or without loadable kernels is an error."""
    if backend not in ("auto", "gsplat", "torch"):
        raise SDS3DError(f"unknown rasterizer backend {backend!r}: use 'auto', 'gsplat' or 'torch'")
    if backend == "auto":
        return "gsplat" if device_is_cuda and kernels_or_fallback("gsplat") else "torch"
    if backend == "gsplat":
        if not device_is_cuda:
            raise SDS3DError("the gsplat backend needs CUDA tensors: use backend 'torch' (or 'auto') on a CPU, or --device cuda")
        require_kernels("gsplat", "--gaussians.backend gsplat")
    return backend


def resolve_nerf_sampler(occupancy: bool, device_is_cuda: bool) -> Literal["nerfacc", "torch"]:
    """nerfacc's occupancy-grid marching (CUDA kernels) with an occupancy grid on CUDA when the
    kernels load; otherwise (one warning line on CUDA) the dense torch sampler of
    :func:`sds3d.render.nerf_render.render_rays_dense`, which skips the same grid's empty cells."""
    return "nerfacc" if occupancy and device_is_cuda and kernels_or_fallback("nerfacc") else "torch"


def rasterize_gaussians(
    means: Tensor,  # [N,3]
    quats: Tensor,  # [N,4] wxyz, need not be normalized
    scales: Tensor,  # [N,3] post-activation
    opacities: Tensor,  # [N] post-activation
    colors: Tensor,  # [(C,)N,D] or SH coefficients [(C,)N,K,3] with sh_degree
    viewmats: Tensor,  # [C,4,4] world-to-camera, OpenCV axes
    Ks: Tensor,  # [C,3,3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = True,
    tile_size: int | None = None,
    backgrounds: Tensor | None = None,  # [C,D]
    render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    absgrad: bool = False,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """``gsplat.rasterization`` on either backend: (render_colors [C,H,W,X], render_alphas
    [C,H,W,1], meta). ``tile_size=None`` picks 16 for gsplat and ``TORCH_TILE_SIZE`` for torch.
    """
    which = resolve_backend(backend, means.is_cuda)
    common: dict[str, Any] = dict(
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d, sh_degree=sh_degree,
        packed=packed, backgrounds=backgrounds, render_mode=render_mode, rasterize_mode=rasterize_mode,
    )
    if which == "gsplat":
        import gsplat

        return gsplat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            tile_size=16 if tile_size is None else tile_size, absgrad=absgrad, **common,
        )
    if absgrad:
        raise SDS3DError("absgrad needs the gsplat backend (CUDA); turn absgrad off on the torch backend")
    return torch_rasterizer.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        tile_size=TORCH_TILE_SIZE if tile_size is None else tile_size, **common,
    )


__all__ = ["Backend", "TORCH_TILE_SIZE", "rasterize_gaussians", "resolve_backend", "resolve_nerf_sampler"]
