"""Multi-view score distillation with a camera-conditioned 4-view prior (MVDream).

Shi et al., "MVDream: Multi-view Diffusion for 3D Generation", ICLR 2024, section 3.2-3.3 and
appendix; defaults from MVDream-threestudio (``configs/mvdream-sd21.yaml``,
``multiview_diffusion_guidance.py``). The batch is groups of 4 views of the object at one
elevation, azimuths a + k 90 degrees (the trainer's ``sample_cameras(..., num_views=4)``); the
prior denoises each group jointly.

    x_t   = sqrt(ab_t) x + sqrt(1 - ab_t) eps,   ONE t per group of 4 views
    e_cfg = e(u) + s (e(y) - e(u))               u = negative prompt if given, else ""

x0-reconstruction loss (default, MVDream's ``recon_loss``) with CFG rescale r
(``recon_std_rescale``; Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
are Flawed", applied to x0 per group G of 4 views):

    x0(e)  = (x_t - sqrt(1 - ab_t) e) / sqrt(ab_t)
    x0_hat = r x0(e_cfg) std_G(x0(e(y))) / std_G(x0(e_cfg)) + (1 - r) x0(e_cfg)
    g      = x - x0_hat                          (= sqrt((1-ab)/ab) (e_cfg - eps) when r = 0)

std_G is the (unbiased) standard deviation over the group's 4 views, channels and pixels,
each + 1e-8. Plain SDS (``--mvsds.no-x0-loss``): ``g = w(t) (e_cfg - eps)``, w(t) = 1 - ab_t.
Both: ``loss = 0.5 ||x - sg(x - g)||^2 / B`` (d loss / d x = g / B, B = number of views).

Defaults: s = 50, r = 0.5, t annealed linearly from [0.98, 0.98] T to [0.02, 0.5] T over the
first 80% of the steps (MVDream: 8,000 of 10,000). The text is the plain prompt for every view
(no ", front view" suffix: the camera input carries the view). Cond and uncond run in ONE
``prior.predict_noise`` call, which gets the cameras. MVDream draws one t for the whole batch;
here each group of 4 gets its own (identical for the default batch of 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.guidance.common import ClipMode, Stateless, TimestepConfig, Weighting, finish, noisy, sample_timesteps, weight
from sds3d.prompts import PromptSet
from sds3d.types import GuidanceOutput, Prior, SDS3DError


def _mvdream_timesteps() -> TimestepConfig:
    return TimestepConfig(t_min=0.02, t_max=0.98, anneal="linear", t_max_end=0.5, anneal_at=0.8)


def x0_target(x_t: Tensor, t: Tensor, e_cfg: Tensor, e_cond: Tensor, alphas_cumprod: Tensor, rescale: float, views: int) -> Tensor:
    """MVDream's x0_hat: x0 from e_cfg, its std over each group of ``views`` samples rescaled
    toward that of x0 from e(y) by ``rescale`` (see the module docstring)."""
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    x0 = (x_t - (1 - ab).sqrt() * e_cfg) / ab.sqrt()
    if rescale <= 0:
        return x0
    x0_cond = (x_t - (1 - ab).sqrt() * e_cond) / ab.sqrt()
    dims = (1, 2, 3, 4)
    std_cond = x0_cond.view(-1, views, *x0.shape[1:]).std(dim=dims, keepdim=True) + 1e-8
    std_cfg = x0.view(-1, views, *x0.shape[1:]).std(dim=dims, keepdim=True) + 1e-8
    factor = (std_cond / std_cfg).view(-1, 1, 1, 1, 1).repeat_interleave(views, dim=1).view(-1, 1, 1, 1)
    return rescale * x0 * factor + (1 - rescale) * x0


@dataclass(frozen=True)
class MVSDSConfig:
    """Multi-view SDS (MVDream): SDS on groups of 4 views with one timestep per group."""

    guidance_scale: float = 50.0
    """Classifier-free guidance scale s of the multi-view prior (MVDream: 50)."""
    x0_loss: bool = True
    """MVDream's x0-reconstruction loss g = x - x0_hat (off: plain SDS, g = w(t) (e_cfg - eps))."""
    cfg_rescale: float = 0.5
    """CFG rescale r of x0_hat (0: off; only with the x0 loss; MVDream: 0.5)."""
    timesteps: TimestepConfig = field(default_factory=_mvdream_timesteps)
    """Timestep range and annealing (default: MVDream's linear move from [0.98, 0.98] to
    [0.02, 0.5] over the first 80% of the steps)."""
    weighting: Weighting = "sds"
    """w(t) of the plain SDS loss: sds = 1 - alphas_cumprod[t], uniform = 1 (unused by the x0 loss)."""
    grad_clip: float | None = None
    """Clip g (None: off): elements to [-c, c], or per-sample L2 norm to c (see grad_clip_mode)."""
    grad_clip_mode: ClipMode = "value"
    """value: clamp each element of g; norm: rescale each sample's g to L2 norm <= grad_clip."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.cfg_rescale <= 1.0:
            raise SDS3DError(f"--mvsds.cfg-rescale {self.cfg_rescale} must lie in [0, 1]")

    def setup(self, prior_mv: Prior, prompts: PromptSet) -> MVSDS:
        return MVSDS(self, prior_mv, prompts)


def group_timesteps(cfg: TimestepConfig, batch: int, views: int, step: int, max_steps: int, T: int, device: torch.device) -> Tensor:
    """[batch] timesteps, one per group of ``views`` consecutive samples."""
    if batch % views != 0:
        raise SDS3DError(f"the multi-view prior needs groups of {views} views (batch {batch}): use --batch-size 4, 8, ...")
    return sample_timesteps(cfg, batch // views, step, max_steps, T, device).repeat_interleave(views)


class MVSDS(Stateless):
    """The :class:`sds3d.types.Guidance` for multi-view SDS; works with any prior of 4 views."""

    def __init__(self, cfg: MVSDSConfig, prior: Prior, prompts: PromptSet) -> None:
        if prior is None or getattr(prior, "num_views", 1) < 2:
            raise SDS3DError("mvsds needs a multi-view prior (num_views 4): pass --mv-prior MVDream/MVDream or exemplar")
        self.cfg = cfg
        self.prior = prior
        self.prompts = prompts  # no Perp-Neg: the multi-view prior sees the plain prompt

    def __call__(self, rgb: Tensor, cameras: Cameras, step: int, max_steps: int, background: Tensor | None = None) -> GuidanceOutput:
        prior, cfg = self.prior, self.cfg
        rgb, cameras = rgb.to(prior.device), cameras.to(prior.device)
        x = prior.encode_images(rgb)
        b = x.shape[0]
        t = group_timesteps(cfg.timesteps, b, prior.num_views, step, max_steps, prior.num_train_timesteps, x.device)
        eps = torch.randn_like(x)
        x_t = noisy(x.detach(), t, eps, prior.alphas_cumprod)
        uncond = self.prompts.unconditionals(b)
        conds: list[Any] = [prior.condition([self.prompts.prompt] * b), prior.condition(uncond)]
        e = prior.predict_noise(x_t, t, conds, cameras, background)
        e_cfg = e[1] + cfg.guidance_scale * (e[0] - e[1])
        if cfg.x0_loss:
            g = x.detach() - x0_target(x_t, t, e_cfg, e[0], prior.alphas_cumprod, cfg.cfg_rescale, prior.num_views)
        else:
            g = weight(cfg.weighting, prior.alphas_cumprod, t) * (e_cfg - eps)
        return finish(x, g, t, cfg.grad_clip, cfg.grad_clip_mode)

