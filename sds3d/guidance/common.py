"""Pieces shared by every score-distillation method: timesteps, weighting, clipping, the loss.

Notation (docs/design.md, Conventions): ``x`` is the prior-space image, ``ab = alphas_cumprod`` of the prior,
``x_t = sqrt(ab_t) x + sqrt(1 - ab_t) eps`` (:func:`noisy`), ``T`` the number of training
timesteps of the prior.

Timesteps (:class:`TimestepConfig`, :func:`sample_timesteps`): ``t ~ U[t_min, t_max] T``
means integers in ``[int(t_min T), int(t_max T)]``, one per sample (or one for the whole batch
with ``shared=True``). The ``t_max`` schedules:

* ``"none"``: fixed range.
* ``"step"``: ``t_max`` drops to ``t_max_end`` once ``step >= anneal_at * max_steps``
  (DreamFusion/ProlificDreamer/threestudio style: large noise early for shape, small later
  for detail).
* ``"linear"``: both ends start at ``t_max`` and move linearly until ``anneal_at * max_steps``,
  the lower end to ``t_min`` and the upper to ``t_max_end`` (MVDream's
  ``min_step_percent [0, 0.98, 0.02, 8000]``, ``max_step_percent [0, 0.98, 0.5, 8000]``):
  ``lo = t_max + (t_min - t_max) f``, ``hi = t_max + (t_max_end - t_max) f``,
  ``f = min(step / (anneal_at max_steps), 1)``.
* ``"sqrt"``: deterministic, no sampling: every sample gets
  ``t = t_max - (t_max - t_min) sqrt(step / max_steps)`` (times T, rounded), i.e. t decreases
  monotonically from ``t_max`` to ``t_min``, fast at first (DreamTime, Huang et al. 2023;
  HiFA, Zhu et al. 2023 use this square-root shape).

Weighting ``w(t)``: ``"sds"`` is ``1 - ab_t`` (DreamFusion), ``"uniform"`` is 1.

Gradient clipping (:func:`clip_gradient`, ``grad_clip``): ``"value"`` clamps every element of
``g`` to ``[-c, c]`` (threestudio's ``grad_clip``); ``"norm"`` rescales each sample's ``g`` so
its L2 norm is at most ``c``. NaN/Inf in ``g`` are zeroed first. :func:`clip_at` gives the
threshold at a step when it ramps linearly from ``grad_clip`` to ``grad_clip_end`` over the first
``grad_clip_ramp`` of the steps (GaussianDreamer's ``grad_clip [0, 1.5, 2.0, 1000]``).

The loss (:func:`distillation_loss`) is ``0.5 * ||x - sg(x - g)||^2 / B``, so
``d loss / d x = g / B`` for any ``g`` (the reparameterisation used by threestudio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from sds3d.guidance.perp_neg import PerpNeg
from sds3d.prompts import PromptSet
from sds3d.schedule import progress, reached
from sds3d.types import GuidanceOutput, SDS3DError

Anneal = Literal["none", "step", "linear", "sqrt"]
Weighting = Literal["sds", "uniform"]
ClipMode = Literal["value", "norm"]


@dataclass(frozen=True)
class TimestepConfig:
    """Which diffusion timesteps score the renders (fractions of the prior's T)."""

    t_min: float = 0.02
    """Smallest timestep as a fraction of T."""
    t_max: float = 0.98
    """Largest timestep as a fraction of T (at the start, if annealed)."""
    anneal: Anneal = "none"
    """t_max schedule: none; step (t_max -> t_max_end after anneal_at of the steps); linear
    (the range starts at [t_max, t_max] and moves linearly to [t_min, t_max_end] by anneal_at
    of the steps, MVDream); sqrt (deterministic t = t_max - (t_max - t_min) sqrt(step/max_steps),
    DreamTime-style)."""
    t_max_end: float = 0.5
    """t_max after the drop of the 'step' schedule (the end of the 'linear' one)."""
    anneal_at: float = 0.5
    """Fraction of the steps after which the 'step' schedule drops t_max (by which the
    'linear' one ends)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.t_min <= self.t_max <= 1.0:
            raise SDS3DError(f"timesteps need 0 <= t_min <= t_max <= 1 (got t_min {self.t_min}, t_max {self.t_max})")
        if self.anneal in ("step", "linear") and not self.t_min <= self.t_max_end <= 1.0:
            raise SDS3DError(f"timesteps.t_max_end {self.t_max_end} must lie in [t_min, 1]")
        if not 0.0 <= self.anneal_at <= 1.0:
            raise SDS3DError(f"timesteps.anneal_at {self.anneal_at} must be a fraction of the steps in [0, 1]")


def _index(fraction: float, T: int) -> int:
    return min(max(int(fraction * T + 1e-6), 0), T - 1)


def timestep_range(cfg: TimestepConfig, step: int, max_steps: int, T: int) -> tuple[int, int]:
    """The integer range ``[lo, hi]`` (inclusive) t is drawn from at ``step``."""
    lo = _index(cfg.t_min, T)
    if cfg.anneal == "step" and reached(step, max_steps, cfg.anneal_at):
        return lo, max(lo, _index(cfg.t_max_end, T))
    if cfg.anneal == "linear":
        f = progress(step, max_steps, cfg.anneal_at)
        lo = _index(cfg.t_max + (cfg.t_min - cfg.t_max) * f, T)
        return lo, max(lo, _index(cfg.t_max + (cfg.t_max_end - cfg.t_max) * f, T))
    if cfg.anneal == "sqrt":
        frac = cfg.t_max - (cfg.t_max - cfg.t_min) * math.sqrt(progress(step, max_steps))
        t = min(max(int(round(frac * T)), lo), _index(cfg.t_max, T))
        return t, t
    return lo, max(lo, _index(cfg.t_max, T))


def sample_timesteps(
    cfg: TimestepConfig,
    batch: int,
    step: int,
    max_steps: int,
    T: int,
    device: torch.device | str,
    shared: bool = False,
) -> Tensor:
    """[batch] long timesteps drawn with the global torch RNG (``shared``: one for all)."""
    lo, hi = timestep_range(cfg, step, max_steps, T)
    if lo == hi:
        return torch.full((batch,), lo, dtype=torch.long, device=device)
    n = 1 if shared else batch
    t = torch.randint(lo, hi + 1, (n,), dtype=torch.long, device=device)
    return t.expand(batch).clone() if shared else t


def weight(weighting: Weighting, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """w(t) as [B,1,1,1]: ``1 - ab_t`` ("sds") or 1 ("uniform")."""
    if weighting == "sds":
        return (1.0 - alphas_cumprod[t]).view(-1, 1, 1, 1)
    if weighting == "uniform":
        return torch.ones(t.shape[0], 1, 1, 1, device=alphas_cumprod.device)
    raise SDS3DError(f"unknown weighting {weighting!r}: use sds or uniform")


def noisy(x: Tensor, t: Tensor, eps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """x_t = sqrt(ab_t) x + sqrt(1 - ab_t) eps."""
    ab = alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1)))
    return ab.sqrt() * x + (1.0 - ab).sqrt() * eps


def clip_gradient(g: Tensor, grad_clip: float | None, mode: ClipMode = "value") -> Tensor:
    """Zero NaN/Inf, then clamp elements to [-c, c] ("value") or per-sample L2 norm to c ("norm")."""
    g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    if grad_clip is None:
        return g
    if grad_clip <= 0:
        raise SDS3DError(f"grad_clip must be positive (got {grad_clip}); omit it to disable clipping")
    if mode == "value":
        return g.clamp(-grad_clip, grad_clip)
    if mode == "norm":
        norms = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))
        return g * (grad_clip / norms.clamp_min(1e-12)).clamp(max=1.0)
    raise SDS3DError(f"unknown grad_clip_mode {mode!r}: use value or norm")


def clip_at(grad_clip: float | None, grad_clip_end: float | None, ramp: float, step: int, max_steps: int) -> float | None:
    """The clipping threshold at ``step``: ``grad_clip``, or with ``grad_clip_end`` the linear
    ramp ``c0 + (c1 - c0) min(step / (ramp max_steps), 1)``."""
    if grad_clip is None or grad_clip_end is None:
        return grad_clip
    f = progress(step, max_steps, ramp)
    return grad_clip + (grad_clip_end - grad_clip) * f


class Stateless:
    """A method without trainable state (SDS, NFSD, CSD, multi-view SDS): a checkpoint holds
    ``{}`` for it. The constructor keeps the config, prior and prompts and the Perp-Neg block of
    the prompts (:class:`PerpNeg`, inactive without ``--perp-neg``; multi-view SDS, which takes
    the plain prompt, sets its own fields)."""

    def __init__(self, cfg: Any, prior: Any, prompts: PromptSet) -> None:
        self.cfg = cfg
        self.prior = prior
        self.prompts = prompts
        self.perp_neg = PerpNeg(prompts)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


def distillation_loss(x: Tensor, g: Tensor) -> Tensor:
    """0.5 ||x - sg(x - g)||^2 / B, whose gradient w.r.t. x is g / B."""
    target = (x - g).detach()
    return 0.5 * ((x - target) ** 2).sum() / x.shape[0]


def finish(x: Tensor, g: Tensor, t: Tensor, grad_clip: float | None, clip_mode: ClipMode, **logs: Tensor) -> GuidanceOutput:
    """Clip g, build the loss and the detached logs (no host syncs)."""
    g = clip_gradient(g.float(), grad_clip, clip_mode)
    out_logs: dict[str, float | Tensor] = {
        "t": t.float().mean().detach(),
        "grad_norm": g.flatten(1).norm(dim=1).mean().detach(),
    }
    out_logs.update({k: v.detach() for k, v in logs.items()})
    return GuidanceOutput(loss=distillation_loss(x, g), t=t, logs=out_logs)


def noised_predictions(
    prior: Any, rgb: Tensor, step: int, max_steps: int, timesteps: TimestepConfig,
    prompt_lists: Sequence[Sequence[str]], cameras: Any, background: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The shared start of SDS/NFSD/CSD: encode the renders, draw t and eps, noise, and get the
    predictions for every prompt list in ONE ``prior.predict_noise`` call.

    Returns ``(x, t, eps, e)`` with ``e`` [K,B,...] in the order of ``prompt_lists``.
    """
    x = prior.encode_images(rgb)
    t = sample_timesteps(timesteps, x.shape[0], step, max_steps, prior.num_train_timesteps, x.device)
    eps = torch.randn_like(x)
    x_t = noisy(x.detach(), t, eps, prior.alphas_cumprod)
    e = prior.predict_noise(x_t, t, [prior.condition(p) for p in prompt_lists], cameras, background)
    return x, t, eps, e
