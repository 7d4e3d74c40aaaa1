"""The opacity reset and the large-Gaussian pruning gate are ours, not gsplat's: the same on
gsplat 1.5.3 (whose reset test ``step % reset_every == 0 & step > 0`` never fires) and on a
gsplat with that expression fixed (its main branch; made here by patching the installed source)."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import sys

import gsplat.strategy.default as gsplat_default
import pytest
import torch

import sds3d.scenes.gaussians as gaussians
from sds3d.cameras import orbit_cameras
from sds3d.config import RunConfig
from sds3d.scenes.gaussians import GaussianScene, GaussiansConfig

CPU = torch.device("cpu")
CAMS = orbit_cameras([10.0, 20.0, 0.0, 30.0], [0.0, 90.0, 180.0, -90.0], 2.5, 45.0, 32, 32)
WHITE = torch.ones(4, 3)
BUGGY = "step % self.reset_every == 0 & step > 0"


def fixed_default_strategy() -> type:
    """gsplat's DefaultStrategy with the reset test as gsplat's main branch has it."""
    source = inspect.getsource(gsplat_default)
    if BUGGY in source:
        source = source.replace(BUGGY, "step % self.reset_every == 0 and step > 0")
    name = "gsplat.strategy._default_reset_fixed"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "gsplat.strategy"
    sys.modules[name] = module  # dataclasses looks its module up
    exec(compile(source, gsplat_default.__file__, "exec"), module.__dict__)
    return module.DefaultStrategy


def default_recipe(**kw) -> GaussiansConfig:
    """The default recipe's Gaussians (RunConfig()), fewer of them, opaque enough to see a reset."""
    return dataclasses.replace(RunConfig().gaussians, num_init=300, init_scale=0.05, init_opacity=0.5, **kw)


def scene_after_step(cfg: GaussiansConfig, step: int, strategy: type, monkeypatch: pytest.MonkeyPatch) -> GaussianScene:
    """A scene with 5 Gaussians too large to keep, after one training step at ``step``."""
    monkeypatch.setattr(gaussians, "DefaultStrategy", strategy)
    torch.manual_seed(0)
    scene = cfg.setup(CPU)
    with torch.no_grad():
        scene.splats["scales"][:5] = math.log(2 * cfg.prune_scale3d)
    out = scene.render(CAMS, WHITE)
    scene.pre_backward(step, out)
    (out.rgb - 0.2).square().mean().backward()
    scene.optimizer_step(step, out)
    return scene


def test_the_patched_gsplat_resets_and_the_installed_one_is_what_we_hand_it() -> None:
    """The fixture really is a resetting gsplat: on its own it resets at step reset_every."""
    fixed = fixed_default_strategy()
    cfg = default_recipe()
    torch.manual_seed(0)
    scene = cfg.setup(CPU)
    strategy = fixed(refine_start_iter=cfg.refine_start, refine_stop_iter=cfg.refine_stop, reset_every=cfg.reset_every,
                     prune_opa=cfg.prune_opa, grow_grad2d=math.inf)
    state = strategy.initialize_state()
    out = scene.render(CAMS, WHITE)
    strategy.step_pre_backward(scene.splats, scene.optimizers, state, cfg.reset_every, out.info)
    out.rgb.mean().backward()
    strategy.step_post_backward(scene.splats, scene.optimizers, state, cfg.reset_every, out.info)
    assert float(torch.sigmoid(scene.splats["opacities"].detach()).max()) <= 2 * cfg.prune_opa + 1e-6
    assert scene.strategy.reset_every == gaussians.GSPLAT_NEVER  # ours never lets gsplat see the period


@pytest.mark.parametrize("reset", [False, True])
def test_opacities_at_the_reset_step_do_what_the_docstring_says_on_any_gsplat(reset: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = default_recipe(opacity_reset=reset) if reset else default_recipe()
    assert cfg.reset_every == 700 and cfg.refine_stop > 700 and RunConfig().steps > 700  # the step is reached
    runs = [scene_after_step(cfg, cfg.reset_every, s, monkeypatch) for s in (gsplat_default.DefaultStrategy, fixed_default_strategy())]
    for key in runs[0].splats:
        assert torch.equal(runs[0].splats[key], runs[1].splats[key]), key  # the installed gsplat's result is unchanged
    opacity = torch.sigmoid(runs[0].splats["opacities"].detach())
    adam = runs[0].optimizers["opacities"].state[runs[0].splats["opacities"]]
    if reset:  # every opacity above 2 x prune_opa comes down to it, and its Adam moments restart
        assert float(opacity.max()) == pytest.approx(2 * cfg.prune_opa, rel=1e-5)
        assert float(adam["exp_avg"].abs().max()) == 0.0 and float(adam["exp_avg_sq"].max()) == 0.0
    else:  # never reset: one Adam step (lr 0.05 on the logit) from 0.5 leaves them near 0.5
        assert 0.48 < float(opacity.min()) and float(opacity.max()) < 0.52
        assert float(adam["exp_avg_sq"].max()) > 0.0
    # at the reset step itself nothing is pruned for its size (gsplat's gate: step > reset_every)
    assert runs[0].num_primitives() >= 300


@pytest.mark.parametrize("step,kept_large", [(600, 5), (700, 5), (800, 0)])
def test_large_gaussians_are_pruned_only_after_reset_every(step: int, kept_large: int, monkeypatch: pytest.MonkeyPatch) -> None:
    for strategy in (gsplat_default.DefaultStrategy, fixed_default_strategy()):
        scene = scene_after_step(default_recipe(grow_grad2d=math.inf), step, strategy, monkeypatch)  # no splits
        large = torch.exp(scene.splats["scales"]).amax(-1) > scene.cfg.prune_scale3d
        assert int(large.sum()) == kept_large
