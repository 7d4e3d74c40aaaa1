"""Coupled and multi-view SDS: gradients against the formulas with stub priors of known output."""

from __future__ import annotations

from typing import Any, Sequence

import pytest
import torch
from torch import Tensor

from sds3d.cameras import CameraConfig, Cameras, sample_cameras
from sds3d.guidance.common import TimestepConfig
from sds3d.guidance.coupled import CoupledConfig
from sds3d.guidance.mvsds import MVSDSConfig
from sds3d.guidance.sds import SDSConfig
from sds3d.prompts import PromptSet
from sds3d.types import SDS3DError


class StubPrior:
    """A pixel-space prior: x = 2 rgb - 1 (NCHW); e_k(x_t) = 0.1 x_t + 0.01 code_k, code = len(prompt)."""

    prediction_type = "epsilon"
    num_train_timesteps = 1000

    def __init__(self, num_views: int) -> None:
        self.num_views = num_views
        self.device = torch.device("cpu")
        self.alphas_cumprod = torch.linspace(0.999, 0.01, 1000)
        self.calls: list[dict[str, Any]] = []
        self.prompts: list[list[str]] = []

    def encode_images(self, rgb: Tensor) -> Tensor:
        return rgb.permute(0, 3, 1, 2) * 2.0 - 1.0

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).permute(0, 2, 3, 1)

    def condition(self, prompts: Sequence[str]) -> Tensor:
        self.prompts.append(list(prompts))
        return torch.tensor([float(len(p)) for p in prompts])

    def predict_noise(self, x_t: Tensor, t: Tensor, conditions: Sequence[Any], cameras: Cameras | None = None) -> Tensor:
        self.calls.append(dict(x_t=x_t.clone(), t=t.clone(), cameras=cameras))
        return torch.stack([0.1 * x_t + 0.01 * c.view(-1, 1, 1, 1) for c in conditions])


def _expected_g(prior: StubPrior, x: Tensor, s: float, code_y: Tensor, code_u: Tensor) -> Tensor:
    """g = (1 - ab_t)(e_cfg - eps), eps recovered from the recorded x_t."""
    call = prior.calls[-1]
    ab = prior.alphas_cumprod[call["t"]].view(-1, 1, 1, 1)
    eps = (call["x_t"] - ab.sqrt() * x) / (1 - ab).sqrt()
    e_y = 0.1 * call["x_t"] + 0.01 * code_y.view(-1, 1, 1, 1)
    e_u = 0.1 * call["x_t"] + 0.01 * code_u.view(-1, 1, 1, 1)
    return (1 - ab) * (e_u + s * (e_y - e_u) - eps)


def _batch(groups: int, seed: int = 0) -> tuple[Tensor, Cameras]:
    g = torch.Generator().manual_seed(seed)
    cams = sample_cameras(CameraConfig(), 4 * groups, 8, 8, num_views=4, generator=g)
    rgb = torch.rand(4 * groups, 8, 8, 3, generator=g).requires_grad_(True)
    return rgb, cams


def _codes(prompts: list[str]) -> Tensor:
    return torch.tensor([float(len(p)) for p in prompts])


def test_mvsds_gradient_matches_formula() -> None:
    torch.manual_seed(0)
    prior = StubPrior(num_views=4)
    ps = PromptSet("a corgi", negative="blurry")
    guidance = MVSDSConfig(guidance_scale=7.5, timesteps=TimestepConfig(t_min=0.1, t_max=0.9)).setup(prior, ps)
    rgb, cams = _batch(groups=3)
    out = guidance(rgb, cams, step=0, max_steps=10)
    out.loss.backward()
    assert len(prior.calls) == 1 and prior.calls[0]["cameras"] is not None
    t = prior.calls[0]["t"]
    assert torch.equal(t, t.view(3, 4)[:, :1].expand(3, 4).reshape(-1))  # one t per group
    assert prior.prompts == [["a corgi"] * 12, ["blurry"] * 12]  # plain prompt, no view suffix
    x = rgb.detach().permute(0, 3, 1, 2) * 2 - 1
    g = _expected_g(prior, x, 7.5, _codes(["a corgi"] * 12), _codes(["blurry"] * 12))
    torch.testing.assert_close(rgb.grad, 2.0 * (g / 12).permute(0, 2, 3, 1), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.t, t)


def test_mvsds_t_anneals_and_rejects_bad_batches() -> None:
    prior = StubPrior(num_views=4)
    guidance = MVSDSConfig().setup(prior, PromptSet("a corgi"))
    rgb, cams = _batch(groups=8)
    late = [guidance(rgb, cams, step=60, max_steps=100).t.max().item() for _ in range(5)]
    assert max(late) <= 500  # t_max 0.98 -> 0.5 after half the steps
    with pytest.raises(SDS3DError, match="groups of 4"):
        guidance(rgb[:6], cams[list(range(6))], 0, 10)
    with pytest.raises(SDS3DError, match="multi-view prior"):
        MVSDSConfig().setup(StubPrior(num_views=1), PromptSet("a corgi"))


@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_coupled_gradient_matches_formula(lam: float) -> None:
    torch.manual_seed(1)
    p2d, pmv = StubPrior(num_views=1), StubPrior(num_views=4)
    ps = PromptSet("a corgi")
    ts = TimestepConfig(t_min=0.1, t_max=0.9)
    cfg = CoupledConfig(lam=lam, mv_scale=7.5, timesteps=ts, sds=SDSConfig(guidance_scale=50.0))
    guidance = cfg.setup(p2d, pmv, ps)
    rgb, cams = _batch(groups=2)
    out = guidance(rgb, cams, step=0, max_steps=10)
    out.loss.backward()
    assert len(p2d.calls) == 1 and len(pmv.calls) == 1  # each prior called once per step
    assert p2d.calls[0]["x_t"].shape[0] == 2 and pmv.calls[0]["x_t"].shape[0] == 8
    t_mv = pmv.calls[0]["t"]
    assert torch.equal(t_mv, t_mv.view(2, 4)[:, :1].expand(2, 4).reshape(-1))
    x = rgb.detach().permute(0, 3, 1, 2) * 2 - 1
    # 2D term: view 0 of each group, view-dependent prompts of those cameras, s = 50.
    front = [0, 4]
    y2d = ps.for_cameras(cams[front])
    assert p2d.prompts[0] == y2d and pmv.prompts[0] == ["a corgi"] * 8
    g2d = _expected_g(p2d, x[front], 50.0, _codes(y2d), _codes(["", ""]))
    gmv = _expected_g(pmv, x, 7.5, _codes(["a corgi"] * 8), _codes([""] * 8))
    expected = lam * gmv / 8
    expected[front] += g2d / 2
    torch.testing.assert_close(rgb.grad, 2.0 * expected.permute(0, 2, 3, 1), atol=1e-6, rtol=1e-5)
    assert set(out.logs) >= {"loss_2d", "loss_mv", "t"}


def test_coupled_options() -> None:
    cfg = CoupledConfig(scale_2d=20.0)
    two_d = cfg.two_d_config()
    assert two_d.guidance_scale == 20.0 and two_d.timesteps == cfg.timesteps
    assert cfg.mv_config().guidance_scale == 7.5 and cfg.timesteps.anneal == "step" and cfg.timesteps.t_max_end == 0.5
    assert CoupledConfig().two_d_config().guidance_scale == SDSConfig().guidance_scale
    guidance = CoupledConfig().setup(StubPrior(1), StubPrior(4), PromptSet("a corgi"))
    assert guidance.state_dict() == {}
    rgb, cams = _batch(groups=1)
    with pytest.raises(SDS3DError, match="groups of 4"):
        guidance(rgb[:3], cams[[0, 1, 2]], 0, 10)
    with pytest.raises(SDS3DError):
        CoupledConfig(lam=-1.0)


def test_mvsds_with_tiny_mvdream() -> None:
    """The real module end to end: random tiny MVDream, one mvsds step, gradients reach the renders."""
    from sds3d.priors.mvdream import random_mvdream

    torch.manual_seed(0)
    prior = random_mvdream("tiny", torch.device("cpu"), torch.float32)
    guidance = MVSDSConfig().setup(prior, PromptSet("a corgi"))
    rgb, cams = _batch(groups=1)
    out = guidance(rgb, cams, 0, 10)
    out.loss.backward()
    assert torch.isfinite(out.loss) and rgb.grad is not None and rgb.grad.abs().sum() > 0


def test_coupled_with_vsd_delegates_state() -> None:
    torch.manual_seed(0)
    p2d, pmv = StubPrior(num_views=1), StubPrior(num_views=4)
    guidance = CoupledConfig(two_d="vsd").setup(p2d, pmv, PromptSet("a corgi"))
    rgb, cams = _batch(groups=1)
    out = guidance(rgb, cams, 0, 10)
    out.loss.backward()
    assert torch.isfinite(out.loss) and len(pmv.calls) == 1 and p2d.calls[-1]["x_t"].shape[0] == 1
    state = guidance.state_dict()
    assert "phi" in state  # the VSD term's trainable denoiser
    other = CoupledConfig(two_d="vsd").setup(StubPrior(1), StubPrior(4), PromptSet("a corgi"))
    other.load_state_dict(state)
    a, b = other.state_dict()["phi"], state["phi"]
    assert a.keys() == b.keys()
