"""Coupled score distillation: a 2D prior on one view plus a multi-view prior on four.

    L = L_2D(x_0) + lambda L_MV(x_0, x_1, x_2, x_3)

x_0 is a random view and x_1..x_3 the same elevation at azimuth +90, +180, +270 degrees (the
trainer's ``sample_cameras(..., num_views=4)``; a batch may hold several such groups). L_2D is
SDS or VSD (:mod:`sds3d.guidance.sds`, :mod:`sds3d.guidance.vsd`) with the 2D prior on view 0
of every group, with its view-dependent prompt; L_MV is multi-view SDS
(:mod:`sds3d.guidance.mvsds`) on all views, one shared t per group, s = 7.5, plain prompt.
Each term keeps its own normalisation, so with G groups and B = 4G views

    d L / d x_0^2D = g_2D / G          (2D-prior space, view 0 of each group)
    d L / d x^MV   = lambda g_MV / B   (multi-view prior space, every view)

The multi-view prior fixes the global structure (one front, no Janus faces); the 2D prior adds
detail and sharpness at its full resolution. Both terms anneal t_max 0.98 -> 0.5 after half
the steps. The two priors may sit on different devices: renders and cameras are moved to each
prior's device (differentiably) and the losses come back to the renders' device.
Defaults (docs/methods.md): lambda = 0.5, multi-view s = 7.5, the 2D term's own scale (SDS 100,
VSD 7.5) unless ``scale_2d`` is given.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.guidance.common import TimestepConfig
from sds3d.guidance.mvsds import MVSDS, MVSDSConfig
from sds3d.guidance.sds import SDSConfig
from sds3d.guidance.vsd import VSDConfig
from sds3d.prompts import PromptSet
from sds3d.types import Guidance, GuidanceOutput, Prior, SDS3DError


def _annealed() -> TimestepConfig:
    return TimestepConfig(t_min=0.02, t_max=0.98, anneal="step", t_max_end=0.5, anneal_at=0.5)


@dataclass(frozen=True)
class CoupledConfig:
    """Coupled score distillation: L_2D (SDS or VSD) on view 0 + lambda * multi-view SDS on 4 views."""

    two_d: Literal["sds", "vsd"] = "sds"
    """The 2D term: sds or vsd (configured by --coupled.sds.* / --coupled.vsd.*)."""
    lam: float = 0.5
    """lambda, the weight of the multi-view term."""
    mv_scale: float = 7.5
    """Classifier-free guidance scale of the multi-view prior."""
    scale_2d: float | None = None
    """Guidance scale of the 2D term (default: that of --coupled.sds / --coupled.vsd: 100 / 7.5)."""
    timesteps: TimestepConfig = field(default_factory=_annealed)
    """Timesteps of BOTH terms (replaces --coupled.sds/vsd.timesteps): default t in
    [0.02, 0.98] T, t_max -> 0.5 after half the steps."""
    sds: SDSConfig = SDSConfig(timesteps=TimestepConfig(), grad_clip=None, grad_clip_end=None)
    """The 2D term when two_d is sds (its timesteps are replaced by --coupled.timesteps;
    no gradient clipping, as in the coupled authors' code)."""
    vsd: VSDConfig = VSDConfig()
    """The 2D term when two_d is vsd (its timesteps are replaced by --coupled.timesteps)."""

    def __post_init__(self) -> None:
        if self.lam < 0:
            raise SDS3DError(f"--coupled.lam {self.lam} must be >= 0 (0 turns the multi-view term off)")

    def two_d_config(self) -> SDSConfig | VSDConfig:
        """The nested 2D config with the coupled timesteps (and ``scale_2d``) applied."""
        base: Any = self.sds if self.two_d == "sds" else self.vsd
        names = {f.name for f in dataclasses.fields(base)}
        changes: dict[str, Any] = {"timesteps": self.timesteps} if "timesteps" in names else {}
        if self.scale_2d is not None:
            changes["guidance_scale"] = self.scale_2d
        return dataclasses.replace(base, **changes)

    def mv_config(self) -> MVSDSConfig:
        """Plain SDS with one t per group (the coupled authors' ``mvdream_utils_iteration.py``:
        s = 7.5, w = 1 - ab_t, no x0-reconstruction loss or CFG rescale, unlike --guidance mvsds)."""
        return MVSDSConfig(guidance_scale=self.mv_scale, timesteps=self.timesteps, x0_loss=False, cfg_rescale=0.0)

    def setup(self, prior_2d: Prior, prior_mv: Prior, prompts: PromptSet) -> Coupled:
        return Coupled(self, prior_2d, prior_mv, prompts)


class Coupled:
    """The :class:`sds3d.types.Guidance` for coupled score distillation."""

    def __init__(self, cfg: CoupledConfig, prior_2d: Prior, prior_mv: Prior, prompts: PromptSet) -> None:
        if prior_2d is None or prior_mv is None:
            raise SDS3DError("coupled guidance needs a 2D prior (--prior) and a multi-view prior (--mv-prior)")
        self.cfg = cfg
        self.prior_2d = prior_2d
        self.prior_mv = prior_mv
        self.views = int(prior_mv.num_views)
        self.two_d: Guidance = cfg.two_d_config().setup(prior_2d, prompts)
        self.mv: MVSDS = cfg.mv_config().setup(prior_mv, prompts)

    def __call__(self, rgb: Tensor, cameras: Cameras, step: int, max_steps: int, background: Tensor | None = None) -> GuidanceOutput:
        b = len(cameras)
        if b % self.views != 0:
            raise SDS3DError(f"coupled guidance renders groups of {self.views} views (batch {b}): use --batch-size 4, 8, ...")
        first = list(range(0, b, self.views))  # view 0 of every group
        dev_2d = self.prior_2d.device
        bg_2d = None if background is None else background[first].to(dev_2d)
        out_2d = self.two_d(rgb[first].to(dev_2d), cameras[first].to(dev_2d), step, max_steps, bg_2d)
        out_mv = self.mv(rgb, cameras, step, max_steps, background)
        loss_2d, loss_mv = out_2d.loss.to(rgb.device), out_mv.loss.to(rgb.device)
        logs: dict[str, float | Tensor] = {f"2d/{k}": v for k, v in out_2d.logs.items()}
        logs.update({f"mv/{k}": v for k, v in out_mv.logs.items()})
        logs.update(loss_2d=loss_2d.detach(), loss_mv=loss_mv.detach(), t=out_mv.t.float().mean().detach())
        return GuidanceOutput(loss=loss_2d + self.cfg.lam * loss_mv, t=out_mv.t.to(rgb.device), logs=logs)

    def state_dict(self) -> dict[str, Any]:
        """The 2D term's trainable state (VSD's LoRA and optimizer); the multi-view term has none."""
        return self.two_d.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.two_d.load_state_dict(state)
