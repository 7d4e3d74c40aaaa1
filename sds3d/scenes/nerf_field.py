"""The NeRF scene's radiance field: hash-grid encoding, density and albedo heads, normals, shading.

Field (Instant-NGP encoding + small MLP heads, scene bounded by the sphere |x| < radius):

    h = HashGrid((x / radius + 1) / 2)
    sigma(x)  = act(MLP_sigma(h) + a (1 - |x| / r))          density blob (Magic3D): a ball at start
    act       = softplus, or exp (Instant-NGP; its backward clamps the exponent at 15)
    albedo(x) = sigmoid(MLP_albedo(h))
    n(x)      = -grad sigma / |grad sigma|                   analytic or central differences

The analytic gradient is computed in closed form, forward mode: the hash grid returns its
features' spatial Jacobian, which is pushed through the density MLP (no double backward).

Shading (DreamFusion, Poole et al. 2022) under a point light p:

    lambertian   c = albedo * (ambient + (1 - ambient) max(0, n . l)),   l = (p - x) / |p - x|
    textureless  c = ambient + (1 - ambient) max(0, n . l)               (white albedo)

The options it reads are the :class:`FieldOptions` protocol (:class:`sds3d.scenes.nerf.NerfConfig`
satisfies it); the scene that trains and renders this field is in :mod:`sds3d.scenes.nerf`.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sds3d.scenes.hashgrid import HashGrid, HashGridConfig

Shading = Literal["albedo", "lambertian", "textureless"]


class FieldOptions(Protocol):
    """What the field reads of its options (:class:`sds3d.scenes.nerf.NerfConfig` has them all;
    this module does not import it, so the field does not depend on the scene built around it)."""

    @property
    def radius(self) -> float: ...
    @property
    def grid(self) -> HashGridConfig: ...
    @property
    def hidden_dim(self) -> int: ...
    @property
    def hidden_layers(self) -> int: ...
    @property
    def blob_density(self) -> float: ...
    @property
    def blob_radius(self) -> float: ...
    @property
    def density_activation(self) -> Literal["softplus", "exp"]: ...
    @property
    def normals(self) -> Literal["analytic", "finite_difference"]: ...
    @property
    def normal_eps(self) -> float: ...
    @property
    def background(self) -> Literal["fixed", "random", "learned"]: ...


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward uses exp(min(x, 15)) (Instant-NGP): no overflowing gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """exp with a clamped backward (see :class:`_TruncExp`)."""
    return _TruncExp.apply(x)


def _mlp(n_in: int, width: int, layers: int, n_out: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(n_in if i == 0 else width, width), nn.ReLU()]
    mods.append(nn.Linear(width if layers > 0 else n_in, n_out))
    return nn.Sequential(*mods)


class RadianceField(nn.Module):
    """Density and albedo at world points; an optional learned background over directions."""

    def __init__(self, cfg: FieldOptions) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid: HashGrid = cfg.grid.setup()
        self.density_head = _mlp(self.grid.output_dim, cfg.hidden_dim, cfg.hidden_layers, 1)
        self.albedo_head = _mlp(self.grid.output_dim, cfg.hidden_dim, cfg.hidden_layers, 3)
        self.background = _mlp(3, 32, 1, 3) if cfg.background == "learned" else None

    def _encode(self, x: Tensor) -> Tensor:
        return self.grid((x / self.cfg.radius + 1.0) * 0.5)

    def _blob(self, x: Tensor) -> Tensor:
        return self.cfg.blob_density * (1.0 - x.norm(dim=-1) / self.cfg.blob_radius)

    def _sigma(self, x: Tensor, h: Tensor) -> Tensor:
        return self._activate(self.density_head(h)[:, 0] + self._blob(x))

    def _activate(self, raw: Tensor) -> Tensor:
        return trunc_exp(raw) if self.cfg.density_activation == "exp" else F.softplus(raw)

    def _activate_grad(self, raw: Tensor) -> Tensor:
        """d act / d raw."""
        return torch.exp(raw.clamp(max=15.0)) if self.cfg.density_activation == "exp" else torch.sigmoid(raw)

    def density(self, x: Tensor) -> Tensor:
        return self._sigma(x, self._encode(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N,3] -> sigma [N], albedo [N,3]."""
        h = self._encode(x)
        return self._sigma(x, h), torch.sigmoid(self.albedo_head(h))

    def with_gradient(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """sigma [N], albedo [N,3] and d sigma / d x [N,3] in closed form (forward mode).

        The encoding's Jacobian is pushed through the density head (Linear: W J; ReLU: J
        masked where the unit is off) and the activation; first-order differentiable w.r.t.
        the parameters, so analytic normals cost no double backward.
        """
        h, jac = self.grid.encode((x / self.cfg.radius + 1.0) * 0.5, jacobian=True)
        assert jac is not None
        jac = jac * (0.5 / self.cfg.radius)  # [N,3,D]
        z = h
        for m in self.density_head:
            if isinstance(m, nn.Linear):
                z, jac = m(z), F.linear(jac, m.weight)
            else:  # ReLU
                jac = jac * (z > 0).unsqueeze(1).to(jac.dtype)
                z = m(z)
        raw = z[:, 0] + self._blob(x)
        d_blob = (-self.cfg.blob_density / self.cfg.blob_radius) * F.normalize(x, dim=-1, eps=1e-12)
        grad = self._activate_grad(raw)[:, None] * (jac[:, :, 0] + d_blob)
        return self._activate(raw), torch.sigmoid(self.albedo_head(h)), grad

    def with_normals(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """sigma, albedo, unit normals (-grad sigma) at x by the config's method (analytic or
        central differences with step ``normal_eps``); differentiable when grad is enabled."""
        if self.cfg.normals == "finite_difference":
            sigma, albedo = self(x)
            eps = self.cfg.normal_eps
            offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps  # [3,3]
            shifted = torch.cat([(x[:, None] + offsets).reshape(-1, 3), (x[:, None] - offsets).reshape(-1, 3)])
            s = self.density(shifted).reshape(2, -1, 3)
            grad = (s[0] - s[1]) / (2 * eps)
        else:
            sigma, albedo, grad = self.with_gradient(x)
        return sigma, albedo, -F.normalize(grad, dim=-1, eps=1e-20)


def shade(albedo: Tensor, normal: Tensor, x: Tensor, light: Tensor, ambient: float, shading: Shading) -> Tensor:
    """Colour [N,3] of points x [N,3] under point lights ``light`` [N,3] (formulas above)."""
    if shading == "albedo":
        return albedo
    l_dir = F.normalize(light - x, dim=-1)
    diffuse = ambient + (1 - ambient) * (normal * l_dir).sum(-1, keepdim=True).clamp_min(0)
    return diffuse.expand(-1, 3) if shading == "textureless" else albedo * diffuse
