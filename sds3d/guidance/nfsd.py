"""Noise-Free Score Distillation (Katzir, Patashnik, Cohen-Or, Lischinski, ICLR 2024,
arXiv 2310.17590).

SDS's ``e_cfg - eps`` is split into a condition direction ``d_C`` and a domain direction
``d_D``; NFSD drops the noise term and estimates ``d_D`` with a negative prompt:

    d_C = s (e(y) - e(0))                              e(0): empty prompt
    d_D = e(0)                  if t < 200             (small noise: e(0) is a good denoiser)
        = e(0) - e(neg)         otherwise              (steer away from the "bad" domain)
    g   = w(t) (d_C + d_D),     w(t) = 1 - ab_t,       s = 7.5, no eps term

The switch is per sample. The default negative prompt (when the run has none) is
:data:`sds3d.prompts.NFSD_NEGATIVE_PROMPT`. All three predictions come from ONE
``prior.predict_noise`` call. With Perp-Neg the front and side view prompts join the call and
``e(y) - e(0)`` in ``d_C`` becomes the Perp-Neg direction (base ``e(0)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.guidance.common import ClipMode, Stateless, TimestepConfig, Weighting, finish, noised_predictions, weight
from sds3d.prompts import NFSD_NEGATIVE_PROMPT, PromptSet
from sds3d.types import GuidanceOutput, Prior


@dataclass(frozen=True)
class NFSDConfig:
    """Noise-Free Score Distillation (Katzir et al. 2023)."""

    guidance_scale: float = 7.5
    """Scale s of the condition direction d_C = s (e(y) - e(0))."""
    low_t_threshold: int = 200
    """Below this timestep d_D = e(0); at or above it d_D = e(0) - e(neg)."""
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    """Timestep range and annealing."""
    weighting: Weighting = "sds"
    """w(t): sds = 1 - alphas_cumprod[t], uniform = 1."""
    grad_clip: float | None = None
    """Clip g (None: off): elements to [-c, c], or per-sample L2 norm to c (see grad_clip_mode)."""
    grad_clip_mode: ClipMode = "value"
    """value: clamp each element of g; norm: rescale each sample's g to L2 norm <= grad_clip."""

    def setup(self, prior: Prior, prompts: PromptSet) -> NFSDGuidance:
        return NFSDGuidance(self, prior, prompts)


class NFSDGuidance(Stateless):
    """The :class:`sds3d.types.Guidance` for NFSD."""

    def __init__(self, cfg: NFSDConfig, prior: Prior, prompts: PromptSet) -> None:
        if not prompts.negative:
            prompts = dataclasses.replace(prompts, negative=NFSD_NEGATIVE_PROMPT)
        super().__init__(cfg, prior, prompts)

    def __call__(self, rgb: Tensor, cameras: Cameras, step: int, max_steps: int, background: Tensor | None = None) -> GuidanceOutput:
        prior, cfg = self.prior, self.cfg
        b = len(cameras)
        prompt_lists = [self.prompts.for_cameras(cameras), self.prompts.empties(b), self.prompts.negatives(b)]
        prompt_lists += self.perp_neg.prompt_lists(b)
        x, t, eps, e = noised_predictions(prior, rgb, step, max_steps, cfg.timesteps, prompt_lists, cameras, background)
        e_y, e_0, e_neg = e[0], e[1], e[2]
        direction = e_y - e_0
        if self.perp_neg:
            direction = direction + self.perp_neg.term(direction, e[3:], e_0, cameras)
        d_c = cfg.guidance_scale * direction
        low = (t < cfg.low_t_threshold).view(-1, 1, 1, 1)
        d_d = torch.where(low, e_0, e_0 - e_neg)
        g = weight(cfg.weighting, prior.alphas_cumprod, t) * (d_c + d_d)
        return finish(x, g, t, cfg.grad_clip, cfg.grad_clip_mode, low_t_fraction=low.float().mean())

