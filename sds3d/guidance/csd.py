"""Classifier Score Distillation (Yu, Guo, Li, Liang, Zhang, Qi, "Text-to-3D with Classifier
Score Distillation", ICLR 2024, arXiv 2310.19415). Not to be confused with *coupled* score
distillation (``sds3d.guidance.coupled``).

Only the implicit classifier ``grad log p(y | x_t)`` drives the scene; no eps term:

    g = w(t) [a_y e(y) + a_neg e(neg) + a_0 e(0)]           w(t) = 1 (uniform) by default
    a_y = 1;  a_0: -1 -> 0 and a_neg: 0 -> -1 linearly over the first half of training

so g moves from ``e(y) - e(0)`` to ``e(y) - e(neg)`` (the schedule of the authors' code:
``null_scale [-1 -> 0]``, ``uncond_scale [0 -> -1]`` over 5000 of 10000 steps). Optionally
(default on, as the authors' ``grad_normalize``, ``deep_floyd_simple_guidance.py``) g is
normalised, then multiplied by ``guidance_scale`` (1: the formula as written):

    batch     g <- g / sqrt(mean_batch(g^2))       = sqrt(N) g / ||g||_2 over the whole batch
    batch_l2  g <- g / (||g||_2 + 1e-8)            the authors' exact formula (N = B C h w)
    sample    g <- g_i / sqrt(mean(g_i^2))         per sample (each view gets the same size)

``batch`` (default) keeps the authors' direction and the relative sizes of the batch's
samples; it differs from their formula by the constant sqrt(N) only, which Adam ignores but
which keeps g at unit RMS, the size of an SDS gradient that the scenes' regularizer weights
and the Gaussians' densification threshold are calibrated for (``batch_l2`` makes g about
1/sqrt(N) = 1/128 of that for 4 latents of 64x64: densification would never trigger). The
authors train with batch 1, where ``batch`` and ``sample`` coincide. Timesteps: t_max 0.98 ->
0.5 after half the steps (the authors' ``max_step_percent [5000, 0.98, 0.5, 5001]`` of 10,000). With no negative prompt,
``neg`` is "" and g is ``e(y) - e(0)`` throughout. All three predictions come from ONE
``prior.predict_noise`` call. With Perp-Neg the front and side view prompts join the call and
``a_y * perp_neg_scale * sum_i w_i perp(e(y_i) - e(0), e(y) - e(0))`` is added inside the
bracket (``perpneg_scale`` 3 in the authors' configs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.guidance.common import ClipMode, Stateless, TimestepConfig, Weighting, finish, noised_predictions, weight
from sds3d.prompts import PromptSet
from sds3d.schedule import progress
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
    """Normalize g before guidance_scale (see --csd.normalization)."""
    normalization: Literal["batch", "batch_l2", "sample"] = "batch"
    """batch: unit RMS over the whole batch (the authors' batch-L2 direction, unit-RMS size);
    batch_l2: the authors' g / ||g||_2 exactly; sample: unit RMS per sample."""
    guidance_scale: float = 1.0
    """Multiplies g (1: the formula as written)."""
    perp_neg_scale: float = 3.0
    """Weight of the Perp-Neg term (only with --perp-neg)."""
    timesteps: TimestepConfig = field(default_factory=lambda: TimestepConfig(anneal="step", t_max_end=0.5, anneal_at=0.5))
    """Timestep range and annealing (default: the authors' t_max 0.98 -> 0.5 after half the steps)."""
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


def normalize_gradient(g: Tensor, mode: str) -> Tensor:
    """g [B,...] normalized by ``mode`` (batch, batch_l2 or sample; see the module docstring)."""
    if mode == "batch":
        return g / g.pow(2).mean().sqrt().clamp_min(1e-12)
    if mode == "batch_l2":
        return g / (g.norm(2) + 1e-8)
    if mode == "sample":
        return g / g.pow(2).mean(dim=tuple(range(1, g.dim())), keepdim=True).sqrt().clamp_min(1e-12)
    raise SDS3DError(f"unknown --csd.normalization {mode!r}: use batch, batch_l2 or sample")


class CSDGuidance(Stateless):
    """The :class:`sds3d.types.Guidance` for classifier score distillation."""

    def __call__(self, rgb: Tensor, cameras: Cameras, step: int, max_steps: int, background: Tensor | None = None) -> GuidanceOutput:
        prior, cfg = self.prior, self.cfg
        b = len(cameras)
        prompt_lists = [self.prompts.for_cameras(cameras), self.prompts.negatives(b), self.prompts.empties(b)]
        prompt_lists += self.perp_neg.prompt_lists(b)
        x, t, eps, e = noised_predictions(prior, rgb, step, max_steps, cfg.timesteps, prompt_lists, cameras, background)
        e_y, e_neg, e_0 = e[0], e[1], e[2]
        a_y, a_neg, a_0 = cfg.coefficients(step, max_steps)
        score = a_y * e_y + a_neg * e_neg + a_0 * e_0
        if self.perp_neg:
            score = score + a_y * cfg.perp_neg_scale * self.perp_neg.term(e_y - e_0, e[3:], e_0, cameras)
        g = weight(cfg.weighting, prior.alphas_cumprod, t) * score
        if cfg.normalize:
            g = normalize_gradient(g, cfg.normalization)
        g = cfg.guidance_scale * g
        return finish(x, g, t, cfg.grad_clip, cfg.grad_clip_mode)

