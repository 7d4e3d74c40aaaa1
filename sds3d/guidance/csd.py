"""Classifier Score Distillation (Yu, Guo, Li, Liang, Zhang, Qi, "Text-to-3D with Classifier
Score Distillation", ICLR 2024, arXiv 2310.19415). Not to be confused with *coupled* score
distillation (``sds3d.guidance.coupled``).

Only the implicit classifier ``grad log p(y | x_t)`` drives the scene; no eps term:

    g = w(t) [a_y e(y) + a_neg e(neg) + a_0 e(0)]           w(t) = 1 (uniform) by default
    a_y = 1;  a_0: -1 -> 0 and a_neg: 0 -> -1 linearly over the first half of training

so g moves from ``e(y) - e(0)`` to ``e(y) - e(neg)`` (the schedule of the authors' code:
``null_scale [-1 -> 0]``, ``uncond_scale [0 -> -1]`` over 5000 of 10000 steps). Optionally
(default on, as in the authors' ``grad_normalize``) g is normalised per sample to unit RMS,
``g <- g / sqrt(mean(g^2))``, which makes its size independent of t and of the prior; then it
is multiplied by ``guidance_scale`` (1: the formula as written). With no negative prompt,
``neg`` is "" and g is ``e(y) - e(0)`` throughout. All three predictions come from ONE
``prior.predict_noise`` call. With Perp-Neg the front and side view prompts join the call and
``a_y * perp_neg_scale * sum_i w_i perp(e(y_i) - e(0), e(y) - e(0))`` is added inside the
bracket (``perpneg_scale`` 3 in the authors' configs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.guidance.common import ClipMode, TimestepConfig, Weighting, finish, noised_predictions, progress, weight
from sds3d.guidance.perp_neg import check_perp_neg, perp_neg_prompts, perp_neg_term, perp_neg_weights
from sds3d.prompts import PromptSet
from sds3d.types import GuidanceOutput, Prior, SDS3DError


@dataclass(frozen=True)
class CSDConfig:
    """Classifier Score Distillation (Yu et al. 2023)."""

    anneal_negative: bool = True
    """Move a_0 from -1 to 0 and a_neg from 0 to -1 linearly over the first anneal_fraction of
    the steps (off: a_0 = -1, a_neg = 0, i.e. g = e(y) - e(0) throughout)."""
    anneal_fraction: float = 0.5
    """Fraction of the steps over which the negative-prompt schedule runs."""
    normalize: bool = True
    """Rescale g per sample to unit RMS before guidance_scale."""
    guidance_scale: float = 1.0
    """Multiplies g (1: the formula as written)."""
    perp_neg_scale: float = 3.0
    """Weight of the Perp-Neg term (only with --perp-neg)."""
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    """Timestep range and annealing."""
    weighting: Weighting = "uniform"
    """w(t): sds = 1 - alphas_cumprod[t], uniform = 1."""
    grad_clip: float | None = None
    """Clip g (None: off): elements to [-c, c], or per-sample L2 norm to c (see grad_clip_mode)."""
    grad_clip_mode: ClipMode = "value"
    """value: clamp each element of g; norm: rescale each sample's g to L2 norm <= grad_clip."""

    def __post_init__(self) -> None:
        if self.anneal_negative and not 0.0 < self.anneal_fraction <= 1.0:
            raise SDS3DError(f"--csd.anneal-fraction must lie in (0, 1] (got {self.anneal_fraction})")

    def coefficients(self, step: int, max_steps: int) -> tuple[float, float, float]:
        """(a_y, a_neg, a_0) at ``step``."""
        if not self.anneal_negative:
            return 1.0, 0.0, -1.0
        f = min(progress(step, max_steps) / self.anneal_fraction, 1.0)
        return 1.0, -f, -1.0 + f

    def setup(self, prior: Prior, prompts: PromptSet) -> CSDGuidance:
        return CSDGuidance(self, prior, prompts)


class CSDGuidance:
    """The :class:`sds3d.types.Guidance` for classifier score distillation."""

    def __init__(self, cfg: CSDConfig, prior: Prior, prompts: PromptSet) -> None:
        self.cfg = cfg
        self.prior = prior
        self.prompts = prompts
        self.perp_neg = check_perp_neg(prompts)

    def __call__(self, rgb: Tensor, cameras: Cameras, step: int, max_steps: int) -> GuidanceOutput:
        prior, cfg = self.prior, self.cfg
        b = len(cameras)
        prompt_lists = [self.prompts.for_cameras(cameras), self.prompts.negatives(b), self.prompts.empties(b)]
        if self.perp_neg:
            prompt_lists += perp_neg_prompts(self.prompts, b)
        x, t, eps, e = noised_predictions(prior, rgb, step, max_steps, cfg.timesteps, prompt_lists, cameras)
        e_y, e_neg, e_0 = e[0], e[1], e[2]
        a_y, a_neg, a_0 = cfg.coefficients(step, max_steps)
        score = a_y * e_y + a_neg * e_neg + a_0 * e_0
        if self.perp_neg:
            w_pn = perp_neg_weights(cameras, self.prompts).to(x.device)
            score = score + a_y * cfg.perp_neg_scale * perp_neg_term(e_y - e_0, e[3:], e_0, w_pn)
        g = weight(cfg.weighting, prior.alphas_cumprod, t) * score
        if cfg.normalize:
            g = g / g.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        g = cfg.guidance_scale * g
        return finish(x, g, t, cfg.grad_clip, cfg.grad_clip_mode)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
