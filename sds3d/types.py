"""The small interfaces every scene, prior and guidance method implements.

The training step (docs/design.md, One run) only talks to these:

    cams = sampler.sample(batch)                       # cameras.Cameras
    out = scene.render(cams, background)               # RenderOutput, rgb [B,H,W,3] in [0,1]
    g = guidance(out.rgb, cams, step, max_steps, background)  # GuidanceOutput; its prior encodes
    loss = g.loss + scene.regularization(out, step, max_steps)
    scene.pre_backward(step, out); loss.backward(); scene.optimizer_step(step, out)

Concrete classes are built by frozen dataclass configs with a ``setup(...)`` method.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from sds3d.cameras import Cameras


class SDS3DError(RuntimeError):
    """A user-facing error: its message is one line that says what to do."""


# ----------------------------------------------------------------------------- priors


@runtime_checkable
class Prior(Protocol):
    """A diffusion model that scores images: Stable Diffusion, MVDream, the exemplar prior.

    ``x`` is the prior's own space: latents for latent-diffusion priors, pixels in [-1, 1]
    for pixel priors. ``x_t = sqrt(ab_t) x + sqrt(1 - ab_t) eps`` with ``ab = alphas_cumprod``.
    """

    device: torch.device
    num_train_timesteps: int
    alphas_cumprod: Tensor  # [T] float32 on ``device``
    prediction_type: str  # what the raw model predicts: "epsilon" | "v_prediction" | "sample"
    num_views: int  # 1 for 2D priors, 4 for multi-view priors (batch must be a multiple)

    def encode_images(self, rgb: Tensor) -> Tensor:
        """[B,H,W,3] float in [0,1] (any H, W) -> x [B,C,h,w] float32, differentiable."""
        ...

    def decode(self, x: Tensor) -> Tensor:
        """x [B,C,h,w] -> rgb [B,H,W,3] in [0,1] (for previews; no grad needed)."""
        ...

    def condition(self, prompts: Sequence[str]) -> Any:
        """One conditioning per sample (``len(prompts) == B``); cached per prompt string.

        ``""`` is the unconditional prompt. The returned object is opaque to callers and is
        only passed back to :meth:`predict_noise`.
        """
        ...

    def predict_noise(
        self, x_t: Tensor, t: Tensor, conditions: Sequence[Any], cameras: Cameras | None = None,
        background: Tensor | None = None,
    ) -> Tensor:
        """Noise predictions eps(x_t; c_k) for every conditioning, in ONE batched model call.

        x_t [B,C,h,w], t [B] long. Returns [K,B,C,h,w] float32 (K = len(conditions)), always
        as epsilon (the prior converts v-/sample-prediction). No gradient flows to x_t.
        ``background`` [B,3] in [0,1]: what the renders were composited on. A prior whose data
        are images with known coverage (the exemplar prior) composites them on it; priors that
        score the image as it is (Stable Diffusion, MVDream) ignore it.
        """
        ...


def to_epsilon(model_output: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str) -> Tensor:
    """A raw model output converted to epsilon (float32), with ``ab = alphas_cumprod[t]``:
    ``"epsilon"`` as it is; ``"v_prediction"`` ``eps = sqrt(ab) v + sqrt(1 - ab) x_t``;
    ``"sample"`` ``eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)``."""
    out = model_output.float()
    if prediction_type == "epsilon":
        return out
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    if prediction_type == "v_prediction":
        return ab.sqrt() * out + (1.0 - ab).sqrt() * x_t.float()
    if prediction_type == "sample":
        return (x_t.float() - ab.sqrt() * out) / (1.0 - ab).sqrt()
    raise SDS3DError(f"unsupported prediction_type {prediction_type!r}: use an epsilon, v_prediction or sample model")


# ----------------------------------------------------------------------------- guidance


@dataclass
class GuidanceOutput:
    loss: Tensor  # scalar; d loss / d x = g / B
    t: Tensor  # [B] timesteps used (long)
    logs: dict[str, float | Tensor] = field(default_factory=dict)  # detached scalars to log


@runtime_checkable
class Guidance(Protocol):
    """A score-distillation method. Encodes renders with its own prior(s)."""

    def __call__(
        self, rgb: Tensor, cameras: Cameras, step: int, max_steps: int, background: Tensor | None = None
    ) -> GuidanceOutput:
        """rgb [B,H,W,3] in [0,1] (differentiable), rendered over ``background`` [B,3] -> loss
        whose gradient is the method's g."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Trainable state (VSD's LoRA and its optimizer); {} for stateless methods."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ----------------------------------------------------------------------------- scenes


@dataclass
class RenderOutput:
    rgb: Tensor  # [B,H,W,3] in [0,1], composited over the background
    alpha: Tensor  # [B,H,W,1]
    depth: Tensor  # [B,H,W,1] (expected depth, 0 where empty)
    normal: Tensor | None = None  # [B,H,W,3] world-space, if the scene computes them
    info: dict[str, Any] = field(default_factory=dict)  # renderer meta (gsplat strategies)


@runtime_checkable
class Scene(Protocol):
    """A 3D representation that can be rendered, optimized, saved and queried for export.

    Training uses ``render`` .. ``num_primitives``; the export (:mod:`sds3d.export`) uses
    ``render``, ``eval_mode``, ``bounds``, ``volume_density``, ``density`` and ``albedo``, plus
    the optional capabilities :class:`GridDensity` and :class:`SplatScene` (checked with
    ``isinstance``), and nothing else. A new scene type implements this protocol and needs no
    change outside ``sds3d/scenes/``, ``sds3d/factory.py`` and its config.
    """

    volume_density: bool
    """True when ``density`` is a volume density sigma whose volume rendering
    ``1 - exp(-int sigma ds)`` is the opacity ``render`` shows (a NeRF): the export's automatic
    iso-level then volume-renders the density grid instead of calling ``render``. False for
    densities that are not (3D Gaussians: a sum of opacity-weighted kernels)."""

    def render(self, cameras: Cameras, background: Tensor) -> RenderOutput:
        """background [B,3] in [0,1]."""
        ...

    def regularization(self, out: RenderOutput, step: int, max_steps: int) -> Tensor:
        """Scalar regularizer added to the guidance loss (0 if none)."""
        ...

    def pre_backward(self, step: int, out: RenderOutput) -> None:
        """Called after render, before backward (e.g. retain_grad for densification)."""
        ...

    def optimizer_step(self, step: int, out: RenderOutput) -> None:
        """Step the optimizers, zero grads, then housekeeping (densify/prune, occupancy)."""
        ...

    def num_primitives(self) -> int:
        """Gaussians, or occupied grid cells: logged as a size measure."""
        ...

    def eval_mode(self) -> AbstractContextManager[None]:
        """A context in which renders are evaluation renders (NeRF: fixed samples and albedo
        shading; no change for scenes without a training mode); the mode before is restored
        on exit."""
        ...

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """World box (lo [3], hi [3], float64) that holds everything the scene shows: where
        the export samples the density."""
        ...

    def density(self, points: Tensor) -> Tensor:
        """[N,3] world points -> [N] non-negative density (for mesh extraction)."""
        ...

    def albedo(self, points: Tensor) -> Tensor:
        """[N,3] world points -> [N,3] colour in [0,1] (vertex colours)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Parameters, optimizer and housekeeping state: enough to resume bit-identically."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class GridDensity(Protocol):
    """A scene that can fill a whole density grid faster than point by point (3D Gaussians:
    each one splatted onto the nodes near it); the mesh export uses it when present."""

    def density_on_grid(self, origin: Tensor, voxel: float, counts: tuple[int, int, int]) -> Tensor:
        """Density at the nodes ``origin + voxel * (i, j, k)``, ``0 <= i < counts[0]`` ... ->
        [nx, ny, nz]; the same values as ``density`` at those points."""
        ...


@runtime_checkable
class SplatScene(Protocol):
    """A scene made of 3D Gaussians that can be written as a standard 3DGS ``gaussians.ply``
    (the export writes one for scenes that have this capability)."""

    def viewer_splats(self) -> dict[str, Tensor]:
        """Pre-activation parameters as in gsplat's ``simple_trainer`` (``means`` [N,3],
        ``scales`` [N,3] log, ``quats`` [N,4] wxyz, ``opacities`` [N] logit, ``sh0`` [N,1,3],
        ``shN`` [N,K,3]), detached, as a viewer should show them."""
        ...


@torch.no_grad()
def render_views(
    scene: Scene, cameras: Cameras, device: torch.device | str, chunk: int = 4, background: float = 1.0
) -> RenderOutput:
    """Evaluation renders (in ``scene.eval_mode()``) of every camera over a constant
    ``background`` colour, ``chunk`` cameras at a time, stacked on the CPU as float32: rgb
    [N,H,W,3], alpha and depth [N,H,W,1] (no normals, no info). The one eval-render loop of
    the house (previews, turntables, export, benchmarks)."""
    rgbs, alphas, depths = [], [], []
    with scene.eval_mode():
        for i in range(0, len(cameras), chunk):
            cams = cameras[i : i + chunk].to(device)
            out = scene.render(cams, torch.full((len(cams), 3), background, device=device))
            rgbs.append(out.rgb.float().cpu())
            alphas.append(out.alpha.float().cpu())
            depths.append(out.depth.float().cpu())
    return RenderOutput(rgb=torch.cat(rgbs), alpha=torch.cat(alphas), depth=torch.cat(depths))
