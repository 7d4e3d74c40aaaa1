"""Multi-view score distillation: SDS with a camera-conditioned 4-view prior (MVDream).

Shi et al., "MVDream: Multi-view Diffusion for 3D Generation", ICLR 2024, section 3.3. The
batch is groups of 4 views of the object at one elevation, azimuths a + k 90 degrees (the
trainer's ``sample_cameras(..., num_views=4)``); the prior denoises each group jointly.

    x_t   = sqrt(ab_t) x + sqrt(1 - ab_t) eps,   ONE t per group of 4 views, t ~ U[t_min, t_max] T
    e_cfg = e(u) + s (e(y) - e(u))               u = negative prompt if given, else ""
    g     = w(t) (e_cfg - eps),                  w(t) = 1 - ab_t
    loss  = 0.5 ||x - sg(x - g)||^2 / B          (d loss / d x = g / B, B = number of views)

Defaults: s = 7.5, t in [0.02, 0.98] T with t_max dropping to 0.5 after half the steps. The text
is the plain prompt for every view (no ", front view" suffix: the camera input carries the
view). Cond and uncond run in ONE ``prior.predict_noise`` call, which gets the cameras.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.guidance.common import ClipMode, TimestepConfig, Weighting, finish, noisy, sample_timesteps, weight
from sds3d.prompts import PromptSet
from sds3d.types import GuidanceOutput, Prior, SDS3DError


def _annealed() -> TimestepConfig:
    return TimestepConfig(t_min=0.02, t_max=0.98, anneal="step", t_max_end=0.5, anneal_at=0.5)


@dataclass(frozen=True)
class MVSDSConfig:
    """Multi-view SDS (MVDream): SDS on groups of 4 views with one timestep per group."""

    guidance_scale: float = 7.5
    """Classifier-free guidance scale s of the multi-view prior."""
    timesteps: TimestepConfig = field(default_factory=_annealed)
    """Timestep range and annealing (default: t_max 0.98 -> 0.5 after half the steps)."""
    weighting: Weighting = "sds"
    """w(t): sds = 1 - alphas_cumprod[t], uniform = 1."""
    grad_clip: float | None = None
    """Clip g (None: off): elements to [-c, c], or per-sample L2 norm to c (see grad_clip_mode)."""
    grad_clip_mode: ClipMode = "value"
    """value: clamp each element of g; norm: rescale each sample's g to L2 norm <= grad_clip."""

    def setup(self, prior_mv: Prior, prompts: PromptSet) -> MVSDS:
        return MVSDS(self, prior_mv, prompts)


def group_timesteps(cfg: TimestepConfig, batch: int, views: int, step: int, max_steps: int, T: int, device: torch.device) -> Tensor:
    """[batch] timesteps, one per group of ``views`` consecutive samples."""
    if batch % views != 0:
        raise SDS3DError(f"the multi-view prior needs groups of {views} views (batch {batch}): use --batch-size 4, 8, ...")
    return sample_timesteps(cfg, batch // views, step, max_steps, T, device).repeat_interleave(views)


class MVSDS:
    """The :class:`sds3d.types.Guidance` for multi-view SDS; works with any prior of 4 views."""

    def __init__(self, cfg: MVSDSConfig, prior: Prior, prompts: PromptSet) -> None:
        if prior is None or getattr(prior, "num_views", 1) < 2:
            raise SDS3DError("mvsds needs a multi-view prior (num_views 4): pass --mv-prior MVDream/MVDream or exemplar")
        self.cfg = cfg
        self.prior = prior
        self.prompts = prompts

    def __call__(self, rgb: Tensor, cameras: Cameras, step: int, max_steps: int) -> GuidanceOutput:
        prior, cfg = self.prior, self.cfg
        rgb, cameras = rgb.to(prior.device), cameras.to(prior.device)
        x = prior.encode_images(rgb)
        b = x.shape[0]
        t = group_timesteps(cfg.timesteps, b, prior.num_views, step, max_steps, prior.num_train_timesteps, x.device)
        eps = torch.randn_like(x)
        x_t = noisy(x.detach(), t, eps, prior.alphas_cumprod)
        uncond = self.prompts.negatives(b) if self.prompts.negative else self.prompts.empties(b)
        conds: list[Any] = [prior.condition([self.prompts.prompt] * b), prior.condition(uncond)]
        e = prior.predict_noise(x_t, t, conds, cameras)
        e_cfg = e[1] + cfg.guidance_scale * (e[0] - e[1])
        g = weight(cfg.weighting, prior.alphas_cumprod, t) * (e_cfg - eps)
        return finish(x, g, t, cfg.grad_clip, cfg.grad_clip_mode)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
