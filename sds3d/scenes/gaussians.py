"""3D Gaussian splatting scene (Kerbl et al., SIGGRAPH 2023) for score distillation.

Parameters follow gsplat's ``simple_trainer`` (pre-activation, in ``splats``): ``means``
[N,3], ``scales`` [N,3] (log), ``quats`` [N,4] (wxyz, raw), ``opacities`` [N] (logit),
``sh0`` [N,1,3] and ``shN`` [N,K,3] SH coefficients (K = (degree+1)^2 - 1). Colour is
``max(0.5 + SH(d), 0)``. Initialization: ``num_init`` Gaussians uniform in a ball of
radius ``init_radius`` with random colours (GaussianDreamer / the coupled-SDS recipe).

Rendering is :func:`sds3d.render.rasterize_gaussians` (gsplat on CUDA, the torch tile
rasterizer elsewhere); densification is ``gsplat.strategy.DefaultStrategy`` (clone small /
split large Gaussians whose mean screen-space gradient exceeds ``grow_grad2d``, prune
transparent ones), thresholds from DreamGaussian's SDS recipe, capped at ``max_gaussians``.

Renders finer than the training renders keep their low-pass (``--gaussians.training-lowpass``,
:func:`lowpass_eps2d`): gsplat's 0.3 px^2 screen-space dilation keeps its angular size, so a
scene trained at 64 px does not turn to speckle in a 256 px turntable. The export's density and
the splat file fold the same low-pass into each Gaussian as a world-space filter at the viewing
distance (:meth:`GaussianScene.viewer_scales`, Mip-Splatting's 3D filter).

For export: ``density(x) = sum_i o_i exp(-0.5 (x - mu_i)^T Sigma_i^-1 (x - mu_i))`` over the
Gaussians within 3 sigma of x, and ``albedo(x)`` the same weights' average of the view-
independent colours ``0.5 + C0 sh0``. ``density_on_grid`` fills a whole export grid with the
same density by splatting each Gaussian onto the nodes within its 3-sigma reach (the formulas'
code: :mod:`sds3d.scenes.gaussian_field`). The scene has the ``GridDensity`` and ``SplatScene``
capabilities of :mod:`sds3d.types`, and no training mode (``eval_mode`` changes nothing).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import remove, reset_opa
from torch import Tensor

from sds3d.cameras import CameraConfig, Cameras
from sds3d.render import Backend, rasterize_gaussians, resolve_backend
from sds3d.render.torch_rasterizer import SH_C0
from sds3d.scenes.gaussian_field import ExportParams, density_on_grid, export_params, field_at_points, splat_bounds
from sds3d.schedule import lerp, progress, reached
from sds3d.types import RenderOutput, SDS3DError

PARAM_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


@dataclass(frozen=True)
class GaussiansConfig:
    """3D Gaussians: initialization, learning rates, densification, renderer."""

    num_init: int = 4096
    """Gaussians at initialization, uniform in a ball."""
    init_radius: float = 0.5
    """Radius of the initialization ball (world units; the scene lives in the unit sphere)."""
    sh_degree: int = 0
    """Spherical-harmonics degree of the colours (0 = view-independent RGB; at most 3)."""
    init_opacity: float = 0.1
    """Opacity of new Gaussians (after the sigmoid)."""
    init_color_spread: float = 1.0
    """Initial colours are uniform in 0.5 +- spread/2 per channel: 1 = random in [0, 1]
    (GaussianDreamer-style), 0 = all mid grey (DreamGaussian starts near grey). With
    --gaussians.opacity-entropy, 0 gives meshes closer to the scene (docs/mesh.md)."""
    init_scale: float = 0.025
    """Standard deviation of new Gaussians along each axis (world units, after exp)."""
    lr_means: float = 1e-3
    """Adam learning rate of the centres (at the start when --gaussians.lr-means-final is set)."""
    lr_means_final: float | None = 2e-5
    """Centre learning rate at --gaussians.lr-means-decay-steps, log-linear from --gaussians.lr-means
    (lr = exp((1-f) log lr0 + f log lr1), f = min(step / decay_steps, 1)); threestudio-3dgs
    (1e-3 -> 2e-5 over 1,000 steps) and DreamGaussian (over 300). None: constant."""
    lr_means_decay_steps: int = 1000
    """Steps over which the centre learning rate decays to --gaussians.lr-means-final."""
    lr_scales: float = 5e-3
    """Adam learning rate of the log-scales."""
    lr_quats: float = 1e-3
    """Adam learning rate of the rotations (raw quaternions)."""
    lr_opacities: float = 5e-2
    """Adam learning rate of the opacity logits."""
    lr_colors: float = 1e-2
    """Adam learning rate of the SH degree-0 colour; higher bands use 1/20 of it."""
    refine_start: int = 100
    """Densify and prune after this step."""
    refine_stop: int = 1000
    """Stop densifying and pruning at this step."""
    refine_every: int = 100
    """Densify and prune every this many steps."""
    grow_grad2d: float = 0.01
    """Clone/split Gaussians whose mean screen-space gradient (NDC units) exceeds this.
    Calibration: gsplat's statistic is each view's NDC gradient of the guidance loss
    0.5 ||x - sg(x - g)||^2 / B times the number of views B, i.e. that of a one-view loss of
    weight 1, as in DreamGaussian (batch 1, lambda_sd 1, threshold 0.01: the value kept here).
    In these units threestudio-3dgs's 0.01 (lambda_sds 0.1, 4 views each / 4) is 0.4 and
    GaussianDreamer's 0.0002 (4 views each / 4, summed) is about 0.0002 (docs/recipes.md).
    Scaling the guidance loss (or its gradient: CSD's normalization) moves this threshold."""
    grow_scale3d: float = 0.01
    """Gaussians larger than this (world units) are split, smaller ones cloned."""
    prune_opa: float = 0.01
    """Prune Gaussians whose opacity falls below this."""
    prune_scale3d: float = 0.2
    """After --gaussians.reset-every steps, prune Gaussians larger than this (world units)."""
    reset_every: int = 700
    """Period of the opacity reset (--gaussians.opacity-reset), and the step after which large
    Gaussians are pruned (--gaussians.prune-scale3d), as gsplat's DefaultStrategy uses it."""
    opacity_reset: bool = False
    """Off (the default, what every recipe was tuned and measured with): opacities are never reset.
    On: at every step that is a positive multiple of --gaussians.reset-every and before
    --gaussians.refine-stop (after that step's densification), every opacity above 2 x --gaussians.prune-opa is set to it and the
    opacities' Adam moments are zeroed (3DGS's reset, Kerbl et al. 2023). Done here, not by gsplat
    (whose 1.5.3 reset test ``step % reset_every == 0 & step > 0`` is always false and whose later
    releases fix it), so the behaviour is the same whichever gsplat is installed."""
    max_gaussians: int = 50_000
    """Upper bound on the number of Gaussians: growth stops there, the faintest are pruned.
    References: threestudio-3dgs 500,000 (its MVDream config 100,000), DreamGaussian and
    GaussianDreamer none; kept at 50,000 (not measured with a real prior): it binds only when
    growth reaches it, and the torch fallback's time and the export grow with the count."""
    scale_reg: float = 0.0
    """Weight of a regularizer on the mean largest scale (0 = off)."""
    alpha_entropy: tuple[float, float] = (0.0, 0.0)
    """Weight of the opacity entropy at the first and the last step (linear in between): the
    mean binary entropy of the rendered opacity, -(a log a + (1-a) log(1-a)), which pushes every
    pixel to empty or opaque, so the scene ends solid and a mesh can look like it (the NeRF's
    --nerf.sparsity entropy, on Gaussians). recipes.EXEMPLAR_GAUSSIANS uses (0, 1000)."""
    opacity_entropy: float = 0.0
    """Weight of the mean binary entropy of each Gaussian's own opacity, -(o log o + (1-o) log(1-o)),
    from --gaussians.opacity-entropy-from of the run on (0 = off): every Gaussian ends opaque or
    gone, so the scene is a surface a mesh can copy (fuzzy SDS scenes are a fog of faint Gaussians:
    median opacity 0.14 on the exemplar snowman). A trade-off, not a default: on the exemplar
    benchmark it lifts the mesh's fidelity to its scene and lowers the scene's score against the
    truth (docs/mesh.md). Applied from the start it collapses the scene."""
    opacity_entropy_from: float = 0.6
    """Fraction of the run after which --gaussians.opacity-entropy applies."""
    training_lowpass: bool = True
    """Renders finer than the training renders (a longer focal length in pixels: a 256 px
    turntable of a scene trained at 64 px) keep the training renders' screen-space low-pass:
    gsplat's 0.3 px^2 dilation grows with the square of the focal-length ratio, so it keeps its
    angular size and the scene shows at every size what it was optimized to show. Without it,
    Gaussians smaller than a training pixel shrink to speckle in larger renders (Mip-Splatting's
    erosion artifact). Renders at or below the training size are unchanged. See docs/mesh.md."""
    backend: Backend = "auto"
    """Rasterizer: gsplat's CUDA kernels, the pure-torch path, or auto (gsplat on CUDA)."""

    def __post_init__(self) -> None:
        if not 0 <= self.sh_degree <= 3:
            raise SDS3DError(f"--gaussians.sh-degree {self.sh_degree}: use 0, 1, 2 or 3")
        if self.num_init < 1 or self.max_gaussians < self.num_init:
            raise SDS3DError("--gaussians.num-init must be >= 1 and at most --gaussians.max-gaussians")
        if not 0.0 <= self.init_color_spread <= 1.0:
            raise SDS3DError(f"--gaussians.init-color-spread {self.init_color_spread}: use a value in [0, 1]")
        if not 0 < self.init_opacity < 1 or self.init_scale <= 0 or self.init_radius <= 0:
            raise SDS3DError("--gaussians.init-opacity must be in (0, 1); init-scale and init-radius > 0")
        if self.opacity_entropy < 0 or not 0.0 <= self.opacity_entropy_from <= 1.0:
            raise SDS3DError("--gaussians.opacity-entropy must be >= 0 and --gaussians.opacity-entropy-from in [0, 1]")
        if (self.lr_means_final is not None and self.lr_means_final <= 0) or self.lr_means_decay_steps < 1:
            raise SDS3DError("--gaussians.lr-means-final must be > 0 (or None) and --gaussians.lr-means-decay-steps >= 1")

    def setup(
        self, device: torch.device, train_focal: float | None = None, view_distance: float = CameraConfig.eval_distance
    ) -> "GaussianScene":
        """The scene; ``train_focal``: the longest focal length (pixels) of the training cameras,
        for --gaussians.training-lowpass (None: no low-pass beyond gsplat's); ``view_distance``:
        the distance it is looked at from (the evaluation orbit's), where the export and the splat
        file turn that low-pass into a world-space size."""
        return GaussianScene(self, torch.device(device), train_focal=train_focal, view_distance=view_distance)


EPS2D = 0.3
"""gsplat's screen-space low-pass: pixels^2 added to every projected 2D covariance."""


def lowpass_eps2d(focal: float, train_focal: float | None) -> float:
    """The 2D low-pass (pixels^2) of a render with focal length ``focal`` of a scene trained with
    focal lengths up to ``train_focal``: ``EPS2D * max(1, focal / train_focal)^2``, the training
    renders' low-pass at the same angular size (``EPS2D`` when ``train_focal`` is None)."""
    if train_focal is None:
        return EPS2D
    return EPS2D * max(1.0, focal / train_focal) ** 2


def binary_entropy(p: Tensor, eps: float = 1e-5) -> Tensor:
    """-(p log p + (1-p) log(1-p)), elementwise, with p clamped to [eps, 1-eps]."""
    p = p.clamp(eps, 1 - eps)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def means_lr(cfg: GaussiansConfig, step: int) -> float:
    """The centres' learning rate at ``step`` (see ``GaussiansConfig.lr_means_final``)."""
    if cfg.lr_means_final is None:
        return cfg.lr_means
    f = progress(step, cfg.lr_means_decay_steps)
    return math.exp((1 - f) * math.log(cfg.lr_means) + f * math.log(cfg.lr_means_final))


GSPLAT_NEVER = 2**62
"""The reset_every handed to gsplat: no step reaches it, so neither gsplat's opacity reset (in any
release) nor its large-Gaussian pruning gate fires; GaussianScene does both itself."""


def init_splats(cfg: GaussiansConfig, device: torch.device) -> dict[str, Tensor]:
    """Random Gaussians in a ball (uses the global torch RNG)."""
    n = cfg.num_init
    dirs = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    means = dirs * cfg.init_radius * torch.rand(n, 1) ** (1 / 3)
    rgb = torch.rand(n, 3)
    if cfg.init_color_spread != 1.0:
        rgb = 0.5 + cfg.init_color_spread * (rgb - 0.5)
    k = (cfg.sh_degree + 1) ** 2 - 1
    splats = {
        "means": means,
        "scales": torch.full((n, 3), math.log(cfg.init_scale)),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
        "opacities": torch.full((n,), math.log(cfg.init_opacity / (1 - cfg.init_opacity))),
        "sh0": ((rgb - 0.5) / SH_C0)[:, None, :],
        "shN": torch.zeros(n, k, 3),
    }
    return {key: v.to(device) for key, v in splats.items()}


class GaussianScene:
    """The ``Scene`` protocol for 3D Gaussians (see the module docstring)."""

    def __init__(
        self,
        cfg: GaussiansConfig,
        device: torch.device,
        splats: dict[str, Tensor] | None = None,
        train_focal: float | None = None,
        view_distance: float = CameraConfig.eval_distance,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.train_focal = train_focal if cfg.training_lowpass else None
        self.view_distance = view_distance
        self.backend = resolve_backend(cfg.backend, device.type == "cuda")
        self.strategy = DefaultStrategy(
            prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
            refine_start_iter=cfg.refine_start, refine_stop_iter=cfg.refine_stop,
            refine_every=cfg.refine_every, reset_every=GSPLAT_NEVER,  # reset and large-prune gate: ours
        )
        self.full_strategy = self.strategy
        self.no_grow_strategy = dataclasses.replace(self.strategy, grow_grad2d=math.inf)
        self._build(init_splats(cfg, device) if splats is None else splats)
        self.strategy_state: dict[str, Any] = self.strategy.initialize_state(scene_scale=1.0)

    def _build(self, splats: dict[str, Tensor]) -> None:
        self.splats = torch.nn.ParameterDict({k: torch.nn.Parameter(splats[k].to(self.device).float()) for k in PARAM_KEYS})
        lrs = {"means": self.cfg.lr_means, "scales": self.cfg.lr_scales, "quats": self.cfg.lr_quats,
               "opacities": self.cfg.lr_opacities, "sh0": self.cfg.lr_colors, "shN": self.cfg.lr_colors / 20}
        self.optimizers = {k: torch.optim.Adam([self.splats[k]], lr=lrs[k], eps=1e-15) for k in PARAM_KEYS}
        self.strategy.check_sanity(self.splats, self.optimizers)

    # ------------------------------------------------------------------ rendering

    def render(self, cameras: Cameras, background: Tensor) -> RenderOutput:
        s = self.splats
        rgbd, alpha, meta = rasterize_gaussians(
            s["means"], s["quats"], torch.exp(s["scales"]), torch.sigmoid(s["opacities"]),
            torch.cat([s["sh0"], s["shN"]], 1), cameras.viewmats, cameras.Ks, cameras.width, cameras.height,
            sh_degree=self.cfg.sh_degree, backgrounds=background.to(s["means"]), render_mode="RGB+ED",
            eps2d=lowpass_eps2d(float(cameras.Ks[..., 0, 0].max()), self.train_focal), packed=False, backend=self.backend,
        )
        return RenderOutput(rgb=rgbd[..., :3].clamp(0, 1), alpha=alpha, depth=rgbd[..., 3:4], info=meta)

    def regularization(self, out: RenderOutput, step: int, max_steps: int) -> Tensor:
        """scale_reg * mean largest scale + alpha_entropy (scheduled) * mean entropy of the render
        opacity + opacity_entropy (late in the run) * mean entropy of the Gaussians' opacities."""
        loss = torch.zeros((), device=self.device)
        if self.cfg.scale_reg > 0:
            loss = loss + self.cfg.scale_reg * torch.exp(self.splats["scales"]).amax(-1).mean()
        w = lerp(self.cfg.alpha_entropy, step, max_steps)
        if w > 0:
            loss = loss + w * binary_entropy(out.alpha).mean()
        if self.cfg.opacity_entropy > 0 and reached(step, max_steps, self.cfg.opacity_entropy_from):
            loss = loss + self.cfg.opacity_entropy * binary_entropy(torch.sigmoid(self.splats["opacities"])).mean()
        return loss

    # ------------------------------------------------------------------ optimization

    def pre_backward(self, step: int, out: RenderOutput) -> None:
        if torch.is_grad_enabled() and out.info["means2d"].requires_grad:
            self.strategy.step_pre_backward(self.splats, self.optimizers, self.strategy_state, step, out.info)

    def optimizer_step(self, step: int, out: RenderOutput) -> None:
        for group in self.optimizers["means"].param_groups:
            group["lr"] = means_lr(self.cfg, step)
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        if out.info["means2d"].grad is None:  # nothing reached the Gaussians this step
            return
        at_cap = self.num_primitives() >= self.cfg.max_gaussians
        strategy = self.no_grow_strategy if at_cap else self.full_strategy
        strategy.step_post_backward(self.splats, self.optimizers, self.strategy_state, step, out.info, packed=False)
        self._reset_and_prune_large(step)
        excess = self.num_primitives() - self.cfg.max_gaussians
        if excess > 0:  # growth overshot the cap: drop the faintest Gaussians
            faint = torch.topk(self.splats["opacities"].detach(), excess, largest=False).indices
            mask = torch.zeros(self.num_primitives(), dtype=torch.bool, device=self.device)
            mask[faint] = True
            remove(self.splats, self.optimizers, self.strategy_state, mask)

    @torch.no_grad()
    def _reset_and_prune_large(self, step: int) -> None:
        """After gsplat's refine step: prune Gaussians larger than prune_scale3d once past
        reset_every (gsplat's rule, with its gate handed to us), then --gaussians.opacity-reset."""
        cfg = self.cfg
        if step >= cfg.refine_stop:
            return
        if step > cfg.refine_start and step % cfg.refine_every == 0 and step > cfg.reset_every:
            too_big = torch.exp(self.splats["scales"]).amax(-1) > cfg.prune_scale3d
            if bool(too_big.any()):
                remove(self.splats, self.optimizers, self.strategy_state, too_big)
        if cfg.opacity_reset and step > 0 and step % cfg.reset_every == 0:
            reset_opa(self.splats, self.optimizers, self.strategy_state, 2.0 * cfg.prune_opa)  # logit clamp, Adam moments zeroed

    def num_primitives(self) -> int:
        return int(self.splats["means"].shape[0])

    def lowpass_sigma(self) -> float:
        """The training low-pass as a world-space standard deviation at ``view_distance``:
        ``sqrt(EPS2D) * view_distance / train_focal`` (0 without --gaussians.training-lowpass)."""
        return 0.0 if self.train_focal is None else math.sqrt(EPS2D) * self.view_distance / self.train_focal

    def viewer_scales(self) -> Tensor:
        """Scales [N,3] (after exp) with the training low-pass folded in, ``sqrt(s^2 + sigma^2)``:
        Mip-Splatting's 3D filter, which adds ``sigma^2 I`` to each covariance (its axes unchanged).
        The export's density and the splat file use them, so the mesh is cut from, and splat
        viewers show, the scene that the low-passed renders show."""
        scales = torch.exp(self.splats["scales"].detach())
        return torch.sqrt(scales**2 + self.lowpass_sigma() ** 2)

    def viewer_splats(self) -> dict[str, Tensor]:
        """The splats with :meth:`viewer_scales` (log), for the standard 3DGS file."""
        return {**{k: v.detach() for k, v in self.splats.items()}, "scales": torch.log(self.viewer_scales())}

    # ------------------------------------------------------------------ export queries

    volume_density = False  # a sum of opacity-weighted kernels: the export thresholds on renders

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Nothing to switch: 3D Gaussians render the same in training and evaluation."""
        yield

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The 3-sigma extent of the visible Gaussians (:func:`gaussian_field.splat_bounds`)."""
        return splat_bounds(self.splats)

    def _export_params(self) -> ExportParams:
        """Centres, opacities, colours, precisions and reaches (:func:`gaussian_field.export_params`)."""
        return export_params(self.splats, self.viewer_scales())

    def _field(self, points: Tensor, chunk_pairs: int = 4_000_000, colour: bool = True) -> tuple[Tensor, Tensor | None]:
        """Density [M] and (``colour``) density-weighted colour sum [M,3] at points (:func:`gaussian_field.field_at_points`)."""
        return field_at_points(self._export_params(), points, chunk_pairs, colour)

    def density(self, points: Tensor) -> Tensor:
        return self._field(points, colour=False)[0]

    def density_on_grid(self, origin: Tensor, voxel: float, counts: tuple[int, int, int], chunk: int = 4_000_000) -> Tensor:
        """``density`` at the nodes ``origin + voxel * (i, j, k)`` -> [nx, ny, nz] (``GridDensity``;
        :func:`gaussian_field.density_on_grid`)."""
        return density_on_grid(self._export_params(), origin, voxel, counts, chunk)

    def albedo(self, points: Tensor) -> Tensor:
        dens, col = self._field(points)
        grey = torch.full_like(col, 0.5)
        return torch.where(dens[:, None] > 1e-8, col / dens.clamp_min(1e-8)[:, None], grey)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "splats": {k: v.detach().clone() for k, v in self.splats.items()},
            "optimizers": {k: copy.deepcopy(opt.state_dict()) for k, opt in self.optimizers.items()},
            "strategy_state": {k: v.clone() if isinstance(v, Tensor) else v for k, v in self.strategy_state.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._build(state["splats"])
        for k, opt in self.optimizers.items():
            opt.load_state_dict(copy.deepcopy(state["optimizers"][k]))
        self.strategy_state = {
            k: v.clone().to(self.device) if isinstance(v, Tensor) else v for k, v in state["strategy_state"].items()
        }
