"""Training backgrounds: the white start, the chance of a random colour, colours drawn from (seed, step) alone."""

import dataclasses

import pytest
import torch

from sds3d.config import RunConfig
from sds3d.recipes import exemplar_recipe
from sds3d.train import training_background
from sds3d.types import SDS3DError

CPU = torch.device("cpu")


def backgrounds(cfg: RunConfig, batch: int = 4) -> list[torch.Tensor]:
    return [training_background(cfg, step, batch, CPU) for step in range(cfg.steps)]


def test_white_start_then_random_colours() -> None:
    cfg = dataclasses.replace(exemplar_recipe(scene="nerf"), steps=10, seed=3, batch_size=64)
    assert (cfg.background, cfg.white_start, cfg.random_background_p) == ("random", 0.5, 0.5)
    assert exemplar_recipe().white_start == 0.0  # the Gaussian recipe is random from the first step
    bgs = backgrounds(cfg, 64)
    assert all(torch.equal(b, torch.ones(64, 3)) for b in bgs[:5])  # steps 0-4: white
    late = torch.stack(bgs[5:])  # [5, 64, 3]
    white = (late == 1).all(-1)  # images left white
    assert 0.4 < white.float().mean() < 0.6  # chance 0.5 of a random colour
    coloured = late[~white]
    assert coloured.min() >= 0 and coloured.max() <= 1 and 0.2 < coloured.std() < 0.35  # uniform: std 0.29
    # every image coloured with chance 1; a white start of 0 is random from the first step; "auto" is random
    everyone = torch.stack(backgrounds(dataclasses.replace(cfg, random_background_p=1.0), 64)[5:])
    assert not (everyone == 1).all(-1).any()
    assert torch.equal(everyone[~white], coloured)  # the same colours, the white ones replaced
    assert not (backgrounds(dataclasses.replace(cfg, white_start=0.0), 64)[0] == 1).all(-1).all()
    assert torch.equal(backgrounds(dataclasses.replace(cfg, background="auto"), 64)[7], bgs[7])


def test_random_colours_depend_on_seed_and_step_only() -> None:
    """Same (seed, step) -> the same colours, whatever was drawn before (resume, other streams)."""
    cfg = RunConfig(seed=7, steps=20)
    a = training_background(cfg, 12, 4, CPU)
    torch.rand(100)  # the global stream moves: no effect
    assert torch.equal(training_background(cfg, 12, 4, CPU), a)
    assert not torch.equal(training_background(cfg, 13, 4, CPU), a)
    assert not torch.equal(training_background(dataclasses.replace(cfg, seed=8), 12, 4, CPU), a)
    # the batch's first colours do not depend on the batch size (one stream per step)
    assert torch.equal(training_background(cfg, 12, 8, CPU)[:4], a)


def test_fixed_backgrounds_ignore_the_white_start() -> None:
    cfg = RunConfig(steps=10, white_start=0.5)
    assert all(torch.equal(b, torch.zeros(2, 3)) for b in backgrounds(dataclasses.replace(cfg, background="black"), 2))
    assert all(torch.equal(b, torch.ones(2, 3)) for b in backgrounds(dataclasses.replace(cfg, background="white"), 2))


@pytest.mark.parametrize("field", ["white_start", "random_background_p"])
@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_fractions_outside_0_1_are_one_clear_error(field: str, bad: float) -> None:
    flag = "--" + field.replace("_", "-")
    with pytest.raises(SDS3DError, match=f"{flag} must be in \\[0, 1\\] \\(got {bad}\\)"):
        RunConfig(**{field: bad}, device="cpu").validate()
