"""Build the objects of a run from its config: priors, guidance, scene.

The only place that maps config names (``--scene``, ``--guidance``, ``--prior``) to classes;
each branch is an explicit ``if``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from sds3d.config import RunConfig, resolve_device
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


def load_prior(spec: str, device: torch.device, cfg: RunConfig, multi_view: bool = False) -> Prior:
    """A 2D prior (``multi_view=False``) or the multi-view prior named by ``spec``."""
    if spec == "exemplar" or spec.startswith("exemplar:"):
        from sds3d.priors.exemplar import load_exemplar

        return load_exemplar(spec, device, dataclasses.replace(cfg.exemplar, multi_view=multi_view))
    opts = cfg.diffusers
    if multi_view:
        from sds3d.priors.mvdream import load_mvdream

        return load_mvdream(dataclasses.replace(cfg.mvdream, model=spec), device, dtype=opts.torch_dtype(), cache_dir=opts.cache_dir)
    from sds3d.priors.stable_diffusion import load_stable_diffusion

    return load_stable_diffusion(
        spec,
        device,
        dtype=opts.torch_dtype(),
        cache_dir=opts.cache_dir,
        channels_last=opts.channels_last,
        compile_unet=opts.compile_unet,
        tiny_vae=opts.tiny_vae,
    )


def load_priors(cfg: RunConfig, device: torch.device) -> tuple[Prior | None, Prior | None]:
    """(2D prior, multi-view prior) as the guidance method needs them."""
    prior_2d = None
    prior_mv = None
    if cfg.guidance != "mvsds":
        prior_2d = load_prior(cfg.prior, device, cfg)
    if cfg.guidance in ("coupled", "mvsds"):
        mv_spec = cfg.mv_prior
        if mv_spec is None:
            mv_spec = cfg.prior if cfg.is_exemplar else cfg.mvdream.model
        mv_device = resolve_device(cfg.mv_device) if cfg.mv_device else device
        prior_mv = load_prior(mv_spec, mv_device, cfg, multi_view=True)
    return prior_2d, prior_mv


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
