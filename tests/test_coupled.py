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

    def predict_noise(self, x_t: Tensor, t: Tensor, conditions: Sequence[Any], cameras: Cameras | None = None, background: Tensor | None = None) -> Tensor:
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
    cfg = MVSDSConfig(guidance_scale=7.5, x0_loss=False, timesteps=TimestepConfig(t_min=0.1, t_max=0.9))
    guidance = cfg.setup(prior, ps)
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


def mvdream_x0_grad(x: Tensor, x_t: Tensor, t: Tensor, e_text: Tensor, e_uncond: Tensor, ab_all: Tensor, s: float, r: float) -> Tensor:
    """Direct transcription of MVDream-threestudio's recon_loss branch
    (threestudio/models/guidance/multiview_diffusion_guidance.py at efcd6c3): d loss / d latents."""
    latents = x.clone().requires_grad_(True)
    n_view = 4
    sqrt_recip = (1.0 / ab_all[t]).sqrt().view(-1, 1, 1, 1)
    sqrt_recipm1 = (1.0 / ab_all[t] - 1).sqrt().view(-1, 1, 1, 1)
    noise_pred = e_uncond + s * (e_text - e_uncond)
    latents_recon = sqrt_recip * x_t - sqrt_recipm1 * noise_pred
    if r > 0:
        latents_recon_nocfg = sqrt_recip * x_t - sqrt_recipm1 * e_text
        nocfg_reshape = latents_recon_nocfg.view(-1, n_view, *latents_recon_nocfg.shape[1:])
        recon_reshape = latents_recon.view(-1, n_view, *latents_recon.shape[1:])
        factor = (nocfg_reshape.std([1, 2, 3, 4], keepdim=True) + 1e-8) / (recon_reshape.std([1, 2, 3, 4], keepdim=True) + 1e-8)
        latents_recon_adjust = latents_recon.clone() * factor.squeeze(1).repeat_interleave(n_view, dim=0)
        latents_recon = r * latents_recon_adjust + (1 - r) * latents_recon
    loss = 0.5 * torch.nn.functional.mse_loss(latents, latents_recon.detach(), reduction="sum") / latents.shape[0]
    return torch.autograd.grad(loss, latents)[0]


@pytest.mark.parametrize("rescale", [0.0, 0.5, 1.0])
def test_mvsds_x0_loss_matches_mvdream(rescale: float) -> None:
    torch.manual_seed(3)
    prior = StubPrior(num_views=4)
    ps = PromptSet("a corgi", negative="blurry")
    cfg = MVSDSConfig(guidance_scale=50.0, cfg_rescale=rescale, timesteps=TimestepConfig(t_min=0.3, t_max=0.9))
    assert cfg.x0_loss  # the default
    rgb, cams = _batch(groups=2, seed=4)
    out = cfg.setup(prior, ps)(rgb, cams, step=0, max_steps=10)
    out.loss.backward()
    call = prior.calls[-1]
    x_t, t = call["x_t"], call["t"]
    x = rgb.detach().permute(0, 3, 1, 2) * 2 - 1
    e_text = 0.1 * x_t + 0.01 * _codes(["a corgi"] * 8).view(-1, 1, 1, 1)
    e_uncond = 0.1 * x_t + 0.01 * _codes(["blurry"] * 8).view(-1, 1, 1, 1)
    ref = mvdream_x0_grad(x, x_t, t, e_text, e_uncond, prior.alphas_cumprod, 50.0, rescale)
    torch.testing.assert_close(rgb.grad, 2.0 * ref.permute(0, 2, 3, 1), atol=1e-6, rtol=1e-5)
    if rescale == 0.0:  # = SDS with weight sqrt((1 - ab) / ab)
        ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x_t - ab.sqrt() * x) / (1 - ab).sqrt()
        sds = ((1 - ab) / ab).sqrt() * (e_uncond + 50.0 * (e_text - e_uncond) - eps)
        torch.testing.assert_close(ref * 8, sds, atol=1e-5, rtol=1e-5)


def test_mvsds_cfg_rescale_differs_per_group() -> None:
    """The rescale factor is per group of 4 views: two groups of different content get different factors."""
    from sds3d.guidance.mvsds import x0_target

    ab = torch.linspace(0.999, 0.01, 1000)
    x_t = torch.cat([torch.randn(4, 3, 4, 4), 5 * torch.randn(4, 3, 4, 4)])
    t = torch.full((8,), 500)
    e_y, e_cfg = 0.1 * x_t, 0.1 * x_t + torch.randn_like(x_t)
    full = x0_target(x_t, t, e_cfg, e_y, ab, 1.0, 4)
    plain = x0_target(x_t, t, e_cfg, e_y, ab, 0.0, 4)
    factors = (full / plain).flatten(1)
    assert torch.allclose(factors[:4], factors[0, 0].expand(4, 48)) and torch.allclose(factors[4:], factors[4, 0].expand(4, 48))
    assert not torch.isclose(factors[0, 0], factors[4, 0])
    for k in (0, 4):  # rescaled x0 has the std of x0 from e(y) in its group
        x0_y = (x_t[k : k + 4] - (1 - ab[500]).sqrt() * e_y[k : k + 4]) / ab[500].sqrt()
        torch.testing.assert_close(full[k : k + 4].std(), x0_y.std(), rtol=1e-4, atol=1e-6)


def test_mvsds_t_anneals_and_rejects_bad_batches() -> None:
    prior = StubPrior(num_views=4)
    guidance = MVSDSConfig().setup(prior, PromptSet("a corgi"))
    rgb, cams = _batch(groups=8)
    assert guidance(rgb, cams, step=0, max_steps=100).t.tolist() == [980] * 32  # MVDream: [0.98, 0.98] at first
    late = [guidance(rgb, cams, step=80, max_steps=100).t for _ in range(5)]
    assert max(t.max().item() for t in late) <= 500 and min(t.min().item() for t in late) >= 20  # [0.02, 0.5] from 80%
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
    cfg = CoupledConfig(lam=lam, mv_scale=7.5, timesteps=ts, sds=SDSConfig(guidance_scale=50.0, grad_clip=None))
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
    assert not cfg.mv_config().x0_loss and cfg.mv_config().cfg_rescale == 0.0  # the coupled authors' plain SDS
    assert cfg.sds.grad_clip is None  # no clipping in the coupled authors' 2D term
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
    from sds3d.priors.archs import random_mvdream

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
