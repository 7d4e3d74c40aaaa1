"""Build the objects of a run from its config: priors, guidance, scene.

The only place that maps config names (``--scene``, ``--guidance``, ``--prior``) to classes;
each branch is an explicit ``if``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sds3d.checkpoint import load_checkpoint, load_into, require_entries
from sds3d.config import MULTI_VIEW_GUIDANCE, DiffusersOptions, RunConfig, is_exemplar_prior, resolve_device
from sds3d.priors.exemplar import ExemplarConfig
from sds3d.priors.mvdream import MVDreamConfig
from sds3d.prompts import PromptSet
from sds3d.types import Guidance, Prior, Scene


def build_prompts(prompt: str, cfg: RunConfig) -> PromptSet:
    return PromptSet(
        prompt=prompt,
        negative=cfg.negative_prompt,
        view_dependent=cfg.view_dependent,
        views=cfg.views,
        perp_neg=cfg.perp_neg,
    )


@dataclass(frozen=True)
class PriorSpec:
    """Everything that decides which model one prior loads, derived from a RunConfig by
    :func:`prior_specs`. :func:`load_prior` reads nothing else, so two runs can share a loaded
    prior exactly when their specs are equal (the batch engines' cache key)."""

    name: str  # hub id, folder, "exemplar" or "exemplar:DIR"
    multi_view: bool
    device: str
    exemplar: ExemplarConfig | None  # exemplar priors only
    diffusers: DiffusersOptions | None  # diffusers priors only
    mvdream: MVDreamConfig | None  # multi-view diffusers priors only


def prior_specs(cfg: RunConfig, device: torch.device) -> tuple[PriorSpec | None, PriorSpec | None]:
    """(2D prior, multi-view prior) specs as the guidance method needs them."""

    def spec(name: str, dev: torch.device, multi_view: bool) -> PriorSpec:
        if is_exemplar_prior(name):
            return PriorSpec(name, multi_view, str(dev), dataclasses.replace(cfg.exemplar, multi_view=multi_view), None, None)
        mvdream = dataclasses.replace(cfg.mvdream, model=name) if multi_view else None
        return PriorSpec(name, multi_view, str(dev), None, cfg.diffusers, mvdream)

    spec_2d = spec_mv = None
    if cfg.guidance != "mvsds":
        spec_2d = spec(cfg.prior, device, False)
    if cfg.guidance in MULTI_VIEW_GUIDANCE:
        mv_name = cfg.mv_prior
        if mv_name is None:
            mv_name = cfg.prior if cfg.is_exemplar else cfg.mvdream.model
        mv_device = resolve_device(cfg.mv_device) if cfg.mv_device else device
        spec_mv = spec(mv_name, mv_device, True)
    return spec_2d, spec_mv


def load_prior(spec: PriorSpec) -> Prior:
    """The prior a spec names."""
    device = torch.device(spec.device)
    if spec.exemplar is not None:
        from sds3d.priors.exemplar import load_exemplar

        return load_exemplar(spec.name, device, spec.exemplar)
    opts = spec.diffusers
    assert opts is not None
    if spec.mvdream is not None:
        from sds3d.priors.mvdream import load_mvdream

        return load_mvdream(spec.mvdream, device, dtype=opts.torch_dtype(), cache_dir=opts.cache_dir)
    from sds3d.priors.stable_diffusion import load_stable_diffusion

    return load_stable_diffusion(
        spec.name,
        device,
        dtype=opts.torch_dtype(),
        cache_dir=opts.cache_dir,
        channels_last=opts.channels_last,
        compile_unet=opts.compile_unet,
        tiny_vae=opts.tiny_vae,
    )


def load_priors(cfg: RunConfig, device: torch.device) -> tuple[Prior | None, Prior | None]:
    """(2D prior, multi-view prior) as the guidance method needs them."""
    return tuple(None if s is None else load_prior(s) for s in prior_specs(cfg, device))  # type: ignore[return-value]


def build_guidance(cfg: RunConfig, prompts: PromptSet, prior_2d: Any, prior_mv: Any) -> Guidance:
    g = cfg.guidance
    if g == "sds":
        return cfg.sds.setup(prior_2d, prompts)
    if g == "vsd":
        return cfg.vsd.setup(prior_2d, prompts)
    if g == "nfsd":
        return cfg.nfsd.setup(prior_2d, prompts)
    if g == "csd":
        return cfg.csd.setup(prior_2d, prompts)
    if g == "coupled":
        return cfg.coupled.setup(prior_2d, prior_mv, prompts)
    if g == "mvsds":
        return cfg.mvsds.setup(prior_mv, prompts)
    raise ValueError(f"unknown guidance {g!r}")


def build_scene(cfg: RunConfig, device: torch.device) -> Scene:
    if cfg.scene == "gaussians":
        sizes, _ = cfg.resolutions()
        return cfg.gaussians.setup(device, cfg.cameras.max_focal(max(sizes)), cfg.cameras.eval_distance)
    if cfg.scene == "nerf":
        return cfg.nerf.setup(device)
    raise ValueError(f"unknown scene {cfg.scene!r}")


def load_scene(run_dir: Path, cfg: RunConfig, device: torch.device, if_missing: str) -> Scene:
    """The scene of a run folder's ``checkpoint.pt``, built from ``cfg`` (its ``config.json``)
    on ``device``; one-line SDS3DError when the file is missing (``if_missing`` says what to do)
    or does not hold such a scene."""
    ckpt_path = Path(run_dir) / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path, device, if_missing=if_missing)
    require_entries(ckpt, ckpt_path, {"scene": dict})
    scene = build_scene(cfg, device)
    load_into(scene, ckpt["scene"], ckpt_path, "scene")
    return scene


def precompute_prompts(priors: tuple[Any, Any], prompt_sets: list[PromptSet]) -> None:
    """Encode every prompt variant at once so a text encoder loads once, then is freed."""
    from sds3d.cameras import VIEW_NAMES
    from sds3d.prompts import NFSD_NEGATIVE_PROMPT, view_prompt

    texts = {"", NFSD_NEGATIVE_PROMPT}
    for ps in prompt_sets:
        texts.update([ps.prompt, ps.negative] + [view_prompt(ps.prompt, v) for v in VIEW_NAMES])
    for prior in priors:
        precompute = getattr(prior, "precompute", None)
        if precompute is not None:
            precompute(sorted(texts))
