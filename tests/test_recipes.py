"""The reference recipes of docs/recipes.md: the centres' learning-rate decay against the
references' schedules, and the exemplar recipe unchanged by the real-prior defaults."""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sds3d.cameras import orbit_cameras
from sds3d.config import to_jsonable
from sds3d.recipes import exemplar_recipe
from sds3d.recipes import EXEMPLAR_GAUSSIANS
from sds3d.scenes.gaussians import GaussiansConfig, means_lr
from sds3d.types import SDS3DError

BEFORE = Path(__file__).parent / "data" / "exemplar_recipe_before_issue17.json"


def dreamgaussian_expon_lr(step: int, lr_init: float, lr_final: float, max_steps: int) -> float:
    """DreamGaussian gs_renderer.get_expon_lr_func with lr_delay_steps = 0 (its text.yaml)."""
    t = min(max(step / max_steps, 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


@pytest.mark.parametrize("step", [0, 1, 250, 500, 999, 1000, 1199])
def test_means_lr_decay_matches_threestudio_3dgs(step: int) -> None:
    """threestudio-3dgs position_lr [0, 0.001, 0.00002, 1000], interpolation 'exp'."""
    cfg = GaussiansConfig()
    assert means_lr(cfg, step) == pytest.approx(dreamgaussian_expon_lr(step, 1e-3, 2e-5, 1000), rel=1e-12)
    assert means_lr(GaussiansConfig(lr_means_final=None), step) == 1e-3


def test_scene_steps_with_the_decayed_means_lr() -> None:
    torch.manual_seed(0)
    cfg = GaussiansConfig(num_init=64, lr_means_decay_steps=10, refine_start=10_000)
    scene = cfg.setup(torch.device("cpu"))
    cams = orbit_cameras([15.0], [0.0], 3.0, 40.0, 16, 16)
    lrs = []
    for step in range(12):
        out = scene.render(cams, torch.ones(1, 3))
        scene.pre_backward(step, out)
        out.rgb.sum().backward()
        before = scene.splats["means"].detach().clone()
        scene.optimizer_step(step, out)
        lrs.append(scene.optimizers["means"].param_groups[0]["lr"])
        # Adam's first step moves each coordinate by lr (sign of its gradient) where it is non-zero
        if step == 0:
            moved = (scene.splats["means"].detach() - before).abs()
            assert moved.max() == pytest.approx(1e-3, rel=1e-3)
    assert lrs == pytest.approx([means_lr(cfg, s) for s in range(12)], rel=1e-12)
    assert lrs[0] == pytest.approx(1e-3) and lrs[10] == pytest.approx(2e-5) and lrs[11] == pytest.approx(2e-5)
    with pytest.raises(SDS3DError, match="lr-means-final"):
        GaussiansConfig(lr_means_final=0.0)


def _same(before: Any, now: Any, path: str) -> list[str]:
    """Paths whose value changed (keys only in ``now`` are new options, checked separately)."""
    if isinstance(before, dict):
        return [p for k, v in before.items() for p in _same(v, now[k], f"{path}.{k}")]
    return [] if before == now else [f"{path}: {before!r} -> {now!r}"]


def test_exemplar_recipe_is_unchanged_by_the_real_prior_recipes() -> None:
    """Every guidance option the exemplar recipe had before this issue keeps its value, the
    new options are off there, and the Gaussians keep a constant centre learning rate."""
    before = json.loads(BEFORE.read_text())
    nerf = to_jsonable(exemplar_recipe(scene="nerf"))
    changed = [p for k in ("sds", "vsd", "nfsd", "csd", "coupled", "mvsds") for p in _same(before[k], nerf[k], k)]
    assert changed == [] and nerf["white_start"] == 0.5
    # the Gaussian variant differs from it in its t schedules and white start alone (issue 30)
    now = to_jsonable(exemplar_recipe())
    changed = [p for k in ("sds", "vsd", "nfsd", "csd", "coupled", "mvsds") for p in _same(before[k], now[k], k)]
    assert changed == ["sds.timesteps.anneal: 'none' -> 'sqrt'", "coupled.timesteps.anneal: 'step' -> 'sqrt'"]
    assert now["white_start"] == 0.0 and {k: v for k, v in now.items() if k not in ("sds", "coupled", "white_start")} == {
        k: v for k, v in nerf.items() if k not in ("sds", "coupled", "white_start", "scene")} | {"scene": "gaussians"}
    assert now["sds"]["grad_clip"] is None and now["csd"]["normalization"] == "sample"
    assert now["mvsds"]["x0_loss"] is False and now["coupled"]["sds"]["grad_clip"] is None
    # the scene presets belong to the exemplar benchmark's owners; this issue only added the
    # centre-lr decay, which is off there
    assert now["gaussians"]["lr_means"] == before["gaussians"]["lr_means"]
    assert now["gaussians"]["lr_means_final"] is None and EXEMPLAR_GAUSSIANS.lr_means_final is None


# ---------------------------------------------------------------------- one recipe system (sds3d.recipes)

import dataclasses  # noqa: E402
import json as _json  # noqa: E402

from sds3d.batch import read_entries  # noqa: E402
from sds3d.cli import parse_command  # noqa: E402
from sds3d.config import RunConfig, save_config  # noqa: E402
from sds3d.recipes import build_recipe, load_config, resolve_run  # noqa: E402


def _cli(*args: str) -> RunConfig:
    return parse_command(["generate", "a snowman", *args])[0].run


def test_the_recipe_follows_from_the_prior_and_typed_options_win() -> None:
    assert _cli() == build_recipe("text-to-image") and _cli().recipe == "text-to-image"
    ex = _cli("--prior", "exemplar")
    assert ex == exemplar_recipe() and ex.recipe == "exemplar" and ex.sds.guidance_scale == 1.0 and ex.steps == 300
    assert _cli("--prior=exemplar:/lib").prior == "exemplar:/lib" and _cli("--prior=exemplar:/lib").recipe == "exemplar"
    # a typed value wins even where it equals another recipe's default (1200 is text-to-image's)
    assert _cli("--prior", "exemplar", "--steps", "1200").steps == 1200
    assert _cli("--prior", "exemplar", "--sds.guidance-scale", "100").sds.guidance_scale == 100.0
    # --recipe alone picks its prior; an untyped option never overrides the recipe
    r = _cli("--recipe", "exemplar", "--seed", "4")
    assert r.prior == "exemplar" and r.seed == 4 and r.gaussians == exemplar_recipe().gaussians
    assert _cli("--recipe", "coupled").guidance == "coupled" and _cli("--recipe", "mvdream").guidance == "mvsds"
    with pytest.raises(SDS3DError, match="recipe exemplar needs an exemplar prior"):
        resolve_run({"recipe": "exemplar", "prior": "stabilityai/sd"})
    with pytest.raises(Exception, match="exemplar prior"):
        exemplar_recipe("stabilityai/sd")
    # the recipe changes scales and the CPU scene presets, never the method formulas' other defaults
    assert RunConfig().sds.guidance_scale == 100.0 and ex.vsd.lr == RunConfig().vsd.lr


def test_a_batch_line_gets_the_same_config_as_generate(tmp_path) -> None:
    """Precedence: recipe < command-line options < line overrides; the recipe of a line follows
    from its own prior, not from the command line's words."""
    f = tmp_path / "p.txt"
    f.write_text("a snowman | prior=exemplar\na snowman | prior=exemplar steps=7\na snowman | recipe=exemplar seed=2\n")
    plain, seven, recipe = read_entries((f,), {})
    assert plain.cfg == _cli("--prior", "exemplar") and plain.cfg.recipe == "exemplar"
    assert seven.cfg == _cli("--prior", "exemplar", "--steps", "7")
    assert recipe.cfg == _cli("--recipe", "exemplar", "--seed", "2")
    _, typed = parse_command(["batch", str(f), "--steps", "50", "--seed", "9"])
    plain, seven, recipe = read_entries((f,), typed)
    assert (plain.cfg.steps, seven.cfg.steps, recipe.cfg.steps) == (50, 7, 50)
    assert (plain.cfg.seed, recipe.cfg.seed) == (9, 2) and plain.cfg.sds.guidance_scale == 1.0


def test_config_json_records_the_recipe_and_fills_missing_fields_from_it(tmp_path) -> None:
    cfg = dataclasses.replace(_cli("--prior", "exemplar"), seed=5)
    save_config(cfg, "a snowman", tmp_path / "config.json")
    data = _json.loads((tmp_path / "config.json").read_text())
    assert data["config"]["recipe"] == "exemplar"
    assert load_config(tmp_path / "config.json") == ("a snowman", cfg)
    del data["config"]["gaussians"]["alpha_entropy"], data["config"]["steps"]
    (tmp_path / "partial.json").write_text(_json.dumps(data))
    _, partial = load_config(tmp_path / "partial.json")
    assert partial.gaussians.alpha_entropy == EXEMPLAR_GAUSSIANS.alpha_entropy != GaussiansConfig().alpha_entropy
    assert partial.steps == 300 and partial.seed == 5
    del data["config"]["recipe"]  # written before recipes were recorded: RunConfig() fills, as it always did
    (tmp_path / "legacy.json").write_text(_json.dumps(data))
    _, legacy = load_config(tmp_path / "legacy.json")
    assert legacy.steps == 1200 and legacy.recipe is None and legacy.gaussians.alpha_entropy == GaussiansConfig().alpha_entropy


def test_the_exemplar_recipe_follows_the_scene(tmp_path) -> None:
    """Gaussians: random backgrounds from the start and sqrt t schedules; NeRF: white start 0.5 and
    fixed t. Each way of starting a run picks the variant of its scene, and a typed value wins
    even where it equals the other scene's recipe."""
    nerf = _cli("--prior", "exemplar", "--scene", "nerf")
    assert nerf == exemplar_recipe(scene="nerf") and (nerf.white_start, nerf.sds.timesteps.anneal) == (0.5, "none")
    assert nerf.coupled.timesteps == RunConfig().coupled.timesteps and nerf.gaussians == EXEMPLAR_GAUSSIANS
    gs = _cli("--prior", "exemplar")
    assert (gs.white_start, gs.sds.timesteps.anneal, gs.coupled.timesteps.anneal) == (0.0, "sqrt", "sqrt")
    assert _cli("--prior", "exemplar", "--scene", "nerf", "--white-start", "0").white_start == 0.0
    assert _cli("--prior", "exemplar", "--white-start", "0.5").white_start == 0.5
    assert _cli("--prior", "exemplar", "--scene", "nerf", "--sds.timesteps.anneal", "sqrt").sds.timesteps.anneal == "sqrt"
    assert _cli("--scene", "nerf").white_start == RunConfig().white_start  # other recipes have no scene variant
    f = tmp_path / "p.txt"
    f.write_text("a snowman | prior=exemplar scene=nerf\n")
    (line,) = read_entries((f,), parse_command(["batch", str(f), "--seed", "3"])[1])
    assert line.cfg == dataclasses.replace(nerf, seed=3)
    # a NeRF run folder's missing fields come from the NeRF recipe
    save_config(nerf, "a snowman", tmp_path / "config.json")
    data = _json.loads((tmp_path / "config.json").read_text())
    del data["config"]["white_start"], data["config"]["sds"]["timesteps"]
    (tmp_path / "config.json").write_text(_json.dumps(data))
    assert load_config(tmp_path / "config.json")[1] == nerf
    with pytest.raises(SDS3DError, match="unknown scene"):
        exemplar_recipe(scene="mesh")  # type: ignore[arg-type]


@pytest.mark.parametrize("change, message", [
    (lambda c: c["cameras"].update(fovy_range=[10, 5]), "cameras.fovy-range: low 10 > high 5"),
    (lambda c: c.update(recipe="magic"), "unknown recipe 'magic'"),
    (lambda c: c.update(cameras=7), "expected an object for CameraConfig"),
])  # fmt: skip
def test_a_bad_config_json_is_one_line(tmp_path, change, message) -> None:
    save_config(_cli("--prior", "exemplar"), "a snowman", tmp_path / "config.json")
    data = _json.loads((tmp_path / "config.json").read_text())
    change(data["config"])
    (tmp_path / "config.json").write_text(_json.dumps(data))
    with pytest.raises(SDS3DError, match="bad run config") as e:
        load_config(tmp_path / "config.json")
    assert message in str(e.value) and "\n" not in str(e.value)
