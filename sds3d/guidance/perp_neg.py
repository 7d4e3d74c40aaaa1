"""Perp-Neg for view-dependent prompts (Armandpour et al., "Re-imagine the Negative Prompt
Algorithm: Transform 2D Diffusion into 3D, alleviate Janus problem and Beyond", 2023), with the
azimuth weight schedule of threestudio's ``use_perp_neg``.

A side or back view is pulled towards its own view prompt and pushed away from the *other*
view prompts, but only along the part of their guidance that is perpendicular to the view
prompt's own guidance (so the shared "it is this object" direction is not cancelled):

    e_pos = e(y_view) - e(base)
    delta = e_pos + sum_i w_i perp(e(y_i) - e(base), e_pos),   y_i in {front prompt, side prompt}
    perp(a, b) = a - (<a, b> / max(<b, b>, 1e-6)) b            (per sample, over C,h,w)

SDS then uses ``e_cfg = e(base) + s * delta`` (``base`` = the unconditional prompt u). The
weights are negative and depend on the azimuth ``az`` (degrees, |az| in [0, 180]) through
``f(r) = a exp(-b r) + c``:

* ``|az| < 90`` (front-side), ``r = 1 - |az|/90`` (1 = front, 0 = side):
  ``w_front = -f_fs(r)``, ``w_side = -f_sf(1 - r)``
* ``|az| >= 90`` (side-back), ``r = 2 - |az|/90`` (1 = side, 0 = back):
  ``w_side = -f_sb(r)``, ``w_front = -f_fsb(r)``
* overhead views (elevation above the overhead threshold): both weights 0.

Defaults (a, b, c) from threestudio: f_fs = f_sf = (4, 0.5, -2.426), f_sb = (1, 0.5, -0.606),
f_fsb = (1, 0.5, 0.967). Unlike threestudio, which interpolates the front/side/back *text
embeddings* by azimuth, the positive prompt here is the camera's discrete view prompt
(``PromptSet.for_cameras``), because a prior's conditioning is opaque; the two negative
prompts are always the front and side view prompts, so every sample needs the same two extra
conditionings and all of them fit the method's single ``predict_noise`` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.prompts import PromptSet, view_prompt
from sds3d.types import SDS3DError

@dataclass(frozen=True)
class PerpNegWeights:
    """(a, b, c) of ``f(r) = a exp(-b r) + c`` for the four Perp-Neg weight curves."""

    f_fs: tuple[float, float, float] = (4.0, 0.5, -2.426)
    f_sf: tuple[float, float, float] = (4.0, 0.5, -2.426)
    f_sb: tuple[float, float, float] = (1.0, 0.5, -0.606)
    f_fsb: tuple[float, float, float] = (1.0, 0.5, 0.967)


def _decay(abc: tuple[float, float, float], r: Tensor) -> Tensor:
    a, b, c = abc
    return a * torch.exp(-b * r) + c


def check_perp_neg(prompts: PromptSet) -> bool:
    """Whether Perp-Neg is on; it needs view-dependent prompts."""
    if prompts.perp_neg and not prompts.view_dependent:
        raise SDS3DError("--perp-neg needs view-dependent prompts: drop --no-view-dependent or --perp-neg")
    return prompts.perp_neg


def perp_neg_prompts(prompts: PromptSet, n: int) -> list[list[str]]:
    """The negative view prompts, one list of ``n`` per Perp-Neg conditioning (front, side)."""
    return [[view_prompt(prompts.prompt, "front")] * n, [view_prompt(prompts.prompt, "side")] * n]


def perp_neg_weights(cameras: Cameras, prompts: PromptSet, weights: PerpNegWeights = PerpNegWeights()) -> Tensor:
    """[B, 2] weights (front, side) for the cameras, on the cameras' device (no host sync)."""
    az = torch.remainder(cameras.azimuth.float() + 180.0, 360.0) - 180.0
    a = az.abs()
    front_side = a < 90.0
    r_fs = 1.0 - a / 90.0
    r_sb = 2.0 - a / 90.0
    w_front = torch.where(front_side, -_decay(weights.f_fs, r_fs), -_decay(weights.f_fsb, r_sb))
    w_side = torch.where(front_side, -_decay(weights.f_sf, 1.0 - r_fs), -_decay(weights.f_sb, r_sb))
    overhead = cameras.elevation.float() > prompts.views.overhead_threshold
    w = torch.stack([w_front, w_side], dim=1)
    return torch.where(overhead[:, None], torch.zeros_like(w), w)


def perpendicular_component(x: Tensor, y: Tensor) -> Tensor:
    """The part of ``x`` perpendicular to ``y``, per sample (dims 1..)."""
    dims = tuple(range(1, x.dim()))
    coef = (x * y).sum(dim=dims, keepdim=True) / (y * y).sum(dim=dims, keepdim=True).clamp_min(1e-6)
    return x - coef * y


def perp_neg_term(e_pos: Tensor, e_negs: Tensor, e_base: Tensor, weights: Tensor) -> Tensor:
    """``sum_i w_i perp(e_negs[i] - e_base, e_pos)``: e_negs [K,B,...], weights [B,K]."""
    out = torch.zeros_like(e_pos)
    for i in range(e_negs.shape[0]):
        w = weights[:, i].view(-1, *([1] * (e_pos.dim() - 1)))
        out = out + w * perpendicular_component(e_negs[i] - e_base, e_pos)
    return out


class PerpNeg:
    """Perp-Neg as a guidance method uses it (SDS, NFSD, CSD, VSD): whether it is on for the
    prompt set, the prompt lists it adds to the method's one ``predict_noise`` call, and its
    term. Falsy when off."""

    def __init__(self, prompts: PromptSet) -> None:
        self.prompts = prompts
        self.enabled = check_perp_neg(prompts)

    def __bool__(self) -> bool:
        return self.enabled

    def prompt_lists(self, n: int) -> list[list[str]]:
        """The front and side view prompts, ``n`` each ([] when off)."""
        return perp_neg_prompts(self.prompts, n) if self.enabled else []

    def term(self, e_pos: Tensor, e_negs: Tensor, e_base: Tensor, cameras: Cameras) -> Tensor:
        """``sum_i w_i perp(e_negs[i] - e_base, e_pos)`` with the cameras' weights
        (:func:`perp_neg_term`, :func:`perp_neg_weights`)."""
        return perp_neg_term(e_pos, e_negs, e_base, perp_neg_weights(cameras, self.prompts).to(e_pos.device))
