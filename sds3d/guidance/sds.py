"""Score Distillation Sampling (Poole et al., "DreamFusion: Text-to-3D using 2D Diffusion",
ICLR 2023).

    x_t   = sqrt(ab_t) x + sqrt(1 - ab_t) eps,       t ~ U[t_min, t_max] T, eps ~ N(0, I)
    e_cfg = e(u) + s (e(y) - e(u))                   u = negative prompt if given, else ""
    g     = w(t) (e_cfg - eps),                      w(t) = 1 - ab_t
    loss  = 0.5 ||x - sg(x - g)||^2 / B              (d loss / d x = g / B)

Defaults (GaussianDreamer's SD-2.1 recipe for 3D Gaussians, 1,200 steps, see docs/recipes.md):
s = 100, t in [0.02, 0.98] T with t_max -> 0.55 after 5/12 of the steps (step 500 of 1,200),
and g clamped elementwise to [-c, c] with c rising linearly 1.5 -> 2.0 over the first 5/6 of
the steps (1,000 of 1,200). The exemplar recipe (:func:`sds3d.recipes.exemplar_recipe`) keeps
the fixed range and no clipping. ``e(y)`` uses the camera's
view-dependent prompt; both predictions come from ONE ``prior.predict_noise`` call (at s = 1
without Perp-Neg, e_cfg = e(y) and the unconditional prediction is skipped, as diffusers'
pipelines skip it at scale <= 1; the exemplar recipe uses s = 1). With
Perp-Neg (``PromptSet.perp_neg``) the front and side view prompts join that call and
``e(y) - e(u)`` is replaced by the Perp-Neg direction of :mod:`sds3d.guidance.perp_neg`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.guidance.common import ClipMode, Stateless, TimestepConfig, Weighting, clip_at, finish, noised_predictions, weight
from sds3d.prompts import PromptSet
from sds3d.types import GuidanceOutput, Prior


@dataclass(frozen=True)
class SDSConfig:
    """Score Distillation Sampling (DreamFusion)."""

    guidance_scale: float = 100.0
    """Classifier-free guidance scale s."""
    timesteps: TimestepConfig = field(default_factory=lambda: TimestepConfig(anneal="step", t_max_end=0.55, anneal_at=5 / 12))
    """Timestep range and annealing (default: GaussianDreamer's t_max 0.98 -> 0.55 after 5/12 of
    the steps, i.e. from step 500 of 1,200; threestudio-3dgs drops to 0.5 after 1/5)."""
    weighting: Weighting = "sds"
    """w(t): sds = 1 - alphas_cumprod[t], uniform = 1."""
    grad_clip: float | None = 1.5
    """Clip g (None: off): elements to [-c, c], or per-sample L2 norm to c (see grad_clip_mode).
    Default: GaussianDreamer's value clamp, 1.5 rising to --sds.grad-clip-end."""
    grad_clip_end: float | None = 2.0
    """Clipping threshold at --sds.grad-clip-ramp of the steps, linear from --sds.grad-clip
    (None: a constant threshold)."""
    grad_clip_ramp: float = 5 / 6
    """Fraction of the steps over which the threshold moves to --sds.grad-clip-end
    (GaussianDreamer: 1,000 of 1,200)."""
    grad_clip_mode: ClipMode = "value"
    """value: clamp each element of g; norm: rescale each sample's g to L2 norm <= grad_clip."""

    def setup(self, prior: Prior, prompts: PromptSet) -> SDSGuidance:
        return SDSGuidance(self, prior, prompts)


class SDSGuidance(Stateless):
    """The :class:`sds3d.types.Guidance` for SDS."""

    def __call__(self, rgb: Tensor, cameras: Cameras, step: int, max_steps: int, background: Tensor | None = None) -> GuidanceOutput:
        prior, cfg = self.prior, self.cfg
        b = len(cameras)
        guided = cfg.guidance_scale != 1.0 or bool(self.perp_neg)
        prompt_lists = [self.prompts.for_cameras(cameras)]
        if guided:
            prompt_lists += [self.prompts.unconditionals(b)] + self.perp_neg.prompt_lists(b)
        x, t, eps, e = noised_predictions(prior, rgb, step, max_steps, cfg.timesteps, prompt_lists, cameras, background)
        e_cfg = e[0]  # s = 1 without Perp-Neg: e_cfg = e(y), no unconditional prediction needed
        if guided:
            e_y, e_u = e[0], e[1]
            delta = e_y - e_u
            if self.perp_neg:
                delta = delta + self.perp_neg.term(delta, e[2:], e_u, cameras)
            e_cfg = e_u + cfg.guidance_scale * delta
        g = weight(cfg.weighting, prior.alphas_cumprod, t) * (e_cfg - eps)
        clip = clip_at(cfg.grad_clip, cfg.grad_clip_end, cfg.grad_clip_ramp, step, max_steps)
        return finish(x, g, t, clip, cfg.grad_clip_mode)

