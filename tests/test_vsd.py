"""VSD: LoRA e_phi on a tiny UNet (trains, leaves the base bit-identical, resumes exactly),
the particle-denoiser path, and the gradient formula."""

from __future__ import annotations

import copy
import zlib
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
from torch import Tensor

from sds3d.cameras import Cameras, orbit_cameras
from sds3d.guidance.common import TimestepConfig, noisy
from sds3d.types import to_epsilon
from sds3d.guidance.particle_denoiser import SIGMA_DATA, ParticleDenoiserScore
from sds3d.guidance.vsd import ADAPTER_NAME, LoraScore, VSDConfig
from sds3d.prompts import PromptSet
from sds3d.types import Guidance

PROMPT = "a corgi"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models run ~10x faster single-threaded on a shared, busy 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_unet() -> Any:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=2,
    )
    unet.eval()
    unet.requires_grad_(False)
    return unet


class TinyUnetPrior:
    """A latent prior around a tiny random UNet, with the names VSD's LoRA path uses."""

    num_views = 1

    def __init__(self, prediction_type: str = "epsilon") -> None:
        from diffusers import DDPMScheduler

        self.device = torch.device("cpu")
        self.unet = tiny_unet()
        self.scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type)
        self.num_train_timesteps = 1000
        self.alphas_cumprod = self.scheduler.alphas_cumprod.float()
        self.prediction_type = prediction_type
        self.unet_calls = 0
        self.predict_calls: list[dict[str, Any]] = []
        self.last_x: Tensor | None = None

    def encode_images(self, rgb: Tensor) -> Tensor:
        x = torch.cat([rgb, rgb.mean(-1, keepdim=True)], -1).permute(0, 3, 1, 2) * 2.0 - 1.0
        if x.requires_grad:
            x.retain_grad()
        self.last_x = x
        return x

    def decode(self, x: Tensor) -> Tensor:
        return ((x[:, :3] + 1) / 2).permute(0, 2, 3, 1)

    def condition(self, prompts: Sequence[str]) -> Tensor:
        embs = []
        for p in prompts:
            gen = torch.Generator().manual_seed(zlib.crc32(p.encode()))
            embs.append(torch.randn(6, 32, generator=gen))
        return torch.stack(embs)

    def unet_forward(self, x_t: Tensor, t: Tensor, embeddings: Tensor, class_labels: Tensor | None = None) -> Tensor:
        self.unet_calls += 1
        return self.unet(x_t, t, encoder_hidden_states=embeddings, class_labels=class_labels).sample.float()

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, conditions: Sequence[Any], cameras: Cameras | None = None, background: Tensor | None = None) -> Tensor:
        k, b = len(conditions), x_t.shape[0]
        self.predict_calls.append({"k": k, "b": b, "x_t": x_t.clone(), "t": t.clone()})
        x_in, t_in = x_t.repeat(k, 1, 1, 1), t.repeat(k)
        out = self.unet_forward(x_in, t_in, torch.cat(list(conditions)))
        return to_epsilon(out, x_in, t_in, self.alphas_cumprod, self.prediction_type).view(k, b, *x_t.shape[1:])


class PixelPrior(TinyUnetPrior):
    """No UNet attributes: VSD must fall back to the particle denoiser."""

    def __init__(self) -> None:
        super().__init__()
        self.base = self.unet
        del self.unet, self.scheduler

    def unet_forward(self, *args: Any, **kwargs: Any) -> Tensor:  # type: ignore[override]
        raise AssertionError("the particle path must not call the prior's UNet")

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, conditions: Sequence[Any], cameras: Cameras | None = None, background: Tensor | None = None) -> Tensor:
        self.predict_calls.append({"k": len(conditions), "b": x_t.shape[0], "x_t": x_t.clone(), "t": t.clone()})
        return torch.stack([0.1 * x_t + c.mean() for c in conditions])

    def condition(self, prompts: Sequence[str]) -> Tensor:
        return torch.tensor([float(zlib.crc32(p.encode()) % 7) for p in prompts])


def cams(azimuths: list[float]) -> Cameras:
    return orbit_cameras([15.0] * len(azimuths), azimuths, 3.0, 40.0, 8, 8)


def base_weights(unet: Any) -> dict[str, Tensor]:
    return {k.replace(".base_layer", ""): v.clone() for k, v in unet.state_dict().items() if "lora" not in k}


def fixed_eval_loss(phi: Any, prior: Any, x0: Tensor, cond: Any, camera: Tensor) -> float:
    """The epsilon loss of e_phi on a fixed set of (t, eps)."""
    gen = torch.Generator().manual_seed(7)
    total = 0.0
    for tt in (50, 200, 400, 600, 800):
        t = torch.full((x0.shape[0],), tt)
        eps = torch.randn(x0.shape, generator=gen)
        pred = phi.predict(noisy(x0, t, eps, prior.alphas_cumprod), t, cond, camera)
        total += float(((pred - eps) ** 2).mean())
    return total / 5


def test_lora_trains_and_leaves_base_bit_identical() -> None:
    prior = TinyUnetPrior()
    x_probe = torch.randn(2, 4, 8, 8)
    t_probe = torch.tensor([100, 700])
    conds = [prior.condition([PROMPT] * 2), prior.condition(["", ""])]
    before_pred = prior.predict_noise(x_probe, t_probe, conds)
    before = base_weights(prior.unet)
    guidance = VSDConfig(lr=3e-3).setup(prior, PromptSet(PROMPT, view_dependent=False))
    phi = guidance.phi
    assert isinstance(phi, LoraScore)
    assert all(p.dtype == torch.float32 for p in phi.lora_params) and len(phi.lora_params) > 0
    torch.manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8)
    cond = prior.condition([PROMPT] * 2)
    camera = cams([0.0, 90.0]).c2w().reshape(2, 16)
    loss0 = fixed_eval_loss(phi, prior, x0, cond, camera)
    for _ in range(30):
        phi.train_step(x0, cond, camera)
    loss1 = fixed_eval_loss(phi, prior, x0, cond, camera)
    assert loss1 < 0.95 * loss0, (loss0, loss1)  # measured 1.220 -> 1.125
    lora_b = [p for n, p in zip(phi.lora_names, phi.lora_params) if ".lora_B." in n]
    assert all(float(p.abs().sum()) > 0 for p in lora_b)  # the adapter itself trained (starts at 0)
    assert float(phi.camera_embedding.mlp.linear_2.weight.detach().abs().sum()) > 0
    after = base_weights(prior.unet)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # outside VSD the prior is the plain base model again (adapter off, class slot empty)
    assert prior.unet.class_embedding is None
    torch.testing.assert_close(prior.predict_noise(x_probe, t_probe, conds), before_pred, rtol=0, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_untrained_lora_phi_equals_base_conditional(prediction_type: str) -> None:
    prior = TinyUnetPrior(prediction_type)
    guidance = VSDConfig().setup(prior, PromptSet(PROMPT, view_dependent=False))
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([30, 900])
    cond = prior.condition([PROMPT] * 2)
    camera = cams([0.0, 45.0]).c2w().reshape(2, 16)
    e_phi = guidance.phi.predict(x_t, t, cond, camera)
    torch.testing.assert_close(e_phi, prior.predict_noise(x_t, t, [cond])[0], rtol=1e-5, atol=1e-5)
    loss = guidance.phi.train_step(torch.randn(2, 4, 8, 8), cond, camera)
    assert torch.isfinite(loss)


def test_vsd_gradient_formula_and_unet_calls() -> None:
    prior = TinyUnetPrior()
    prompts = PromptSet(PROMPT, negative="ugly")
    guidance = VSDConfig(phi_updates=0, guidance_scale=7.5, timesteps=TimestepConfig(t_min=0.4, t_max=0.4)).setup(prior, prompts)
    cameras = cams([0.0, 120.0, -100.0])
    torch.manual_seed(2)
    rgb = torch.rand(3, 8, 8, 3, requires_grad=True)
    prior.unet_calls = 0
    out = guidance(rgb, cameras, 0, 10)
    out.loss.backward()
    assert len(prior.predict_calls) == 1 and prior.predict_calls[0]["k"] == 2 and prior.predict_calls[0]["b"] == 3
    assert prior.unet_calls == 2  # base (cond + uncond) in one call, e_phi in a second
    x_t, t = prior.predict_calls[0]["x_t"], prior.predict_calls[0]["t"]
    assert t.tolist() == [400] * 3
    cond = prior.condition(prompts.for_cameras(cameras))
    e = prior.predict_noise(x_t, t, [cond, prior.condition(["ugly"] * 3)])
    # e_phi gets the view-independent prompt (threestudio's VSD); e(y) the view-dependent one
    e_phi = guidance.phi.predict(x_t, t, prior.condition([PROMPT] * 3), cameras.c2w().reshape(3, 16))
    e_phi_vd = guidance.phi.predict(x_t, t, cond, cameras.c2w().reshape(3, 16))
    assert (e_phi - e_phi_vd).abs().max() > 1e-3  # the two prompts give different e_phi here
    expected = (1 - prior.alphas_cumprod[400]) * (e[1] + 7.5 * (e[0] - e[1]) - e_phi)
    assert prior.last_x is not None and prior.last_x.grad is not None
    torch.testing.assert_close(prior.last_x.grad * 3, expected, rtol=1e-4, atol=1e-5)
    assert "phi_loss" in out.logs and not out.logs["phi_loss"].requires_grad


def test_lora_trains_on_the_view_independent_prompt() -> None:
    prior = TinyUnetPrior()
    prompts = PromptSet(PROMPT)
    guidance = VSDConfig(phi_updates=1).setup(prior, prompts)
    seen: list[Tensor] = []
    train_step = guidance.phi.train_step
    guidance.phi.train_step = lambda x0, cond, camera: seen.append(cond) or train_step(x0, cond, camera)  # type: ignore[method-assign]
    cameras = cams([0.0, 120.0, 180.0])
    assert len(set(prompts.for_cameras(cameras))) == 3  # front, side, back
    guidance(torch.rand(3, 8, 8, 3, requires_grad=True), cameras, 0, 10)
    assert len(seen) == 1 and torch.equal(seen[0], prior.condition([PROMPT] * 3))


def run_steps(guidance: Guidance, rgb: Tensor, cameras: Cameras, steps: range, seed: int) -> list[float]:
    torch.manual_seed(seed)
    losses = []
    for step in steps:
        out = guidance(rgb, cameras, step, 10)
        losses.append(float(out.loss))
    return losses


@pytest.mark.parametrize("path", ["lora", "particle"])
def test_state_dict_round_trip_resumes_identically(path: str) -> None:
    prior: Any = TinyUnetPrior() if path == "lora" else PixelPrior()
    cfg = VSDConfig(lr=1e-3)
    prompts = PromptSet(PROMPT)
    cameras = cams([10.0, 170.0])
    rgb = torch.rand(2, 8, 8, 3)
    first = cfg.setup(prior, prompts)
    run_steps(first, rgb, cameras, range(2), seed=0)
    state = copy.deepcopy(first.state_dict())
    expected = run_steps(first, rgb, cameras, range(2, 4), seed=1)
    expected_state = copy.deepcopy(first.state_dict())
    resumed = cfg.setup(prior, prompts)  # on the same prior: the adapter is rebuilt afresh
    resumed.load_state_dict(state)
    assert run_steps(resumed, rgb, cameras, range(2, 4), seed=1) == expected
    got = resumed.state_dict()
    weights = "lora" if path == "lora" else "model"
    for k, v in expected_state["phi"][weights].items():
        assert torch.equal(got["phi"][weights][k], v), k


def test_particle_denoiser_path_trains() -> None:
    prior = PixelPrior()
    guidance = VSDConfig(lr=2e-3).setup(prior, PromptSet(PROMPT))
    phi = guidance.phi
    assert isinstance(phi, ParticleDenoiserScore)
    assert not hasattr(prior, "unet") and ADAPTER_NAME not in str(type(phi))
    torch.manual_seed(0)
    x0 = torch.rand(2, 4, 8, 8) * 2 - 1
    camera = cams([0.0, 90.0]).c2w().reshape(2, 16)
    # untrained: the Wiener estimate (s / d) x_t of the noise
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 800])
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    wiener = (1 - ab).sqrt() / (ab * SIGMA_DATA**2 + 1 - ab) * x_t
    torch.testing.assert_close(phi.predict(x_t, t, None, camera), wiener)
    loss0 = fixed_eval_loss(phi, prior, x0, None, camera)
    for _ in range(30):
        phi.train_step(x0, None, camera)
    loss1 = fixed_eval_loss(phi, prior, x0, None, camera)
    assert loss1 < 0.9 * loss0, (loss0, loss1)
    rgb = torch.rand(2, 8, 8, 3, requires_grad=True)
    out = guidance(rgb, cams([0.0, 90.0]), 0, 10)
    out.loss.backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and len(prior.predict_calls) == 1


def test_vsd_three_steps_with_tiny_sd(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from sds3d.priors.stable_diffusion import load_stable_diffusion

    prior = load_stable_diffusion(str(tiny_sd_dir), torch.device("cpu"), embedding_cache_dir=tmp_path)
    guidance = VSDConfig().setup(prior, PromptSet(PROMPT))
    assert isinstance(guidance, Guidance) and isinstance(guidance.phi, LoraScore)
    rgb = torch.full((1, 16, 16, 3), 0.5, requires_grad=True)
    opt = torch.optim.Adam([rgb], lr=0.01)
    for step in range(3):
        out = guidance(rgb, cams([60.0]), step, 3)
        opt.zero_grad()
        out.loss.backward()
        assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
        opt.step()
    assert prior.unet.class_embedding is None
    assert set(guidance.state_dict()["phi"]) == {"lora", "camera_embedding", "optimizer"}
