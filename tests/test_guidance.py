"""SDS, NFSD, CSD, Perp-Neg and the shared pieces against their formulas, on a stub prior."""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
from torch import Tensor

from sds3d.cameras import Cameras, orbit_cameras
from sds3d.guidance.common import (
    TimestepConfig,
    clip_at,
    clip_gradient,
    distillation_loss,
    noisy,
    sample_timesteps,
    timestep_range,
    weight,
)
from sds3d.guidance.csd import CSDConfig, normalize_gradient
from sds3d.guidance.nfsd import NFSDConfig
from sds3d.guidance.perp_neg import perp_neg_weights, perpendicular_component
from sds3d.guidance.sds import SDSConfig
from sds3d.prompts import NFSD_NEGATIVE_PROMPT, PromptSet, view_prompt
from sds3d.types import Guidance, SDS3DError

C, H, W = 3, 8, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models run ~10x faster single-threaded on a shared, busy 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def sd_alphas_cumprod(T: int = 1000) -> Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T) ** 2
    return torch.cumprod(1.0 - betas, 0)


class StubPrior:
    """A pixel prior whose noise prediction for a prompt is a fixed tensor (crc32-seeded)."""

    num_views = 1
    prediction_type = "epsilon"

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.num_train_timesteps = 1000
        self.alphas_cumprod = sd_alphas_cumprod()
        self.calls: list[dict[str, Any]] = []
        self.last_x: Tensor | None = None

    def encode_images(self, rgb: Tensor) -> Tensor:
        x = rgb.permute(0, 3, 1, 2) * 2.0 - 1.0
        x.retain_grad()
        self.last_x = x
        return x

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).permute(0, 2, 3, 1)

    def condition(self, prompts: Sequence[str]) -> list[str]:
        return list(prompts)

    @staticmethod
    def pred(prompt: str) -> Tensor:
        gen = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
        return torch.randn(C, H, W, generator=gen)

    def predict_noise(self, x_t: Tensor, t: Tensor, conditions: Sequence[Any], cameras: Cameras | None = None, background: Tensor | None = None) -> Tensor:
        self.calls.append({"k": len(conditions), "b": x_t.shape[0], "x_t": x_t.detach().clone(), "t": t.clone(), "prompts": [list(c) for c in conditions]})
        return torch.stack([torch.stack([self.pred(p) for p in c]) for c in conditions])


def cams(azimuths: list[float], elevations: list[float] | None = None) -> Cameras:
    el = elevations if elevations is not None else [15.0] * len(azimuths)
    return orbit_cameras(el, azimuths, 3.0, 40.0, W, H)


def run(guidance: Guidance, prior: StubPrior, cameras: Cameras, step: int = 0, max_steps: int = 100) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns (x, g_actual = B * dloss/dx, eps used, t)."""
    torch.manual_seed(1)
    rgb = torch.rand(len(cameras), H, W, C, requires_grad=True)
    out = guidance(rgb, cameras, step, max_steps)
    out.loss.backward()
    x = prior.last_x
    assert x is not None and x.grad is not None
    call = prior.calls[-1]
    ab = prior.alphas_cumprod[call["t"]].view(-1, 1, 1, 1)
    eps = (call["x_t"] - ab.sqrt() * x.detach()) / (1 - ab).sqrt()
    assert torch.equal(out.t, call["t"])
    for v in out.logs.values():
        assert isinstance(v, Tensor) and not v.requires_grad and v.dim() == 0
    return x.detach(), x.grad * x.shape[0], eps, out.t


def fixed_t(frac: float) -> TimestepConfig:
    return TimestepConfig(t_min=frac, t_max=frac)


def stack(prompts: list[str]) -> Tensor:
    return torch.stack([StubPrior.pred(p) for p in prompts])


PROMPT = "a corgi"


# ----------------------------------------------------------------------------- shared pieces


def test_timestep_sampling_range_and_schedules() -> None:
    cfg = TimestepConfig()
    torch.manual_seed(0)
    t = sample_timesteps(cfg, 20000, 0, 100, 1000, "cpu")
    assert t.dtype == torch.long and int(t.min()) == 20 and int(t.max()) == 980
    step_cfg = TimestepConfig(anneal="step", t_max_end=0.5, anneal_at=0.5)
    assert timestep_range(step_cfg, 49, 100, 1000) == (20, 980)
    assert timestep_range(step_cfg, 50, 100, 1000) == (20, 500)
    sqrt_cfg = TimestepConfig(anneal="sqrt")
    assert timestep_range(sqrt_cfg, 0, 100, 1000) == (980, 980)
    expected = round((0.98 - 0.96 * math.sqrt(0.25)) * 1000)
    assert timestep_range(sqrt_cfg, 25, 100, 1000) == (expected, expected)
    assert timestep_range(sqrt_cfg, 100, 100, 1000) == (20, 20)
    ts = sample_timesteps(sqrt_cfg, 4, 25, 100, 1000, "cpu")
    assert ts.tolist() == [expected] * 4
    shared = sample_timesteps(cfg, 6, 0, 100, 1000, "cpu", shared=True)
    assert len(set(shared.tolist())) == 1
    with pytest.raises(SDS3DError):
        TimestepConfig(t_min=0.5, t_max=0.2)


def threestudio_C(value: list[float], step: int) -> float:
    """threestudio.utils.misc.C for [start_step, start_value, end_value, end_step] (linear)."""
    start_step, start_value, end_value, end_step = value
    f = max(min(1.0, (step - start_step) / (end_step - start_step)), 0.0)
    return start_value + (end_value - start_value) * f


@pytest.mark.parametrize("step", [0, 1, 1000, 3999, 4000, 7999, 8000, 9999])
def test_linear_schedule_matches_mvdream(step: int) -> None:
    """MVDream-threestudio: min_step_percent [0, 0.98, 0.02, 8000], max [0, 0.98, 0.5, 8000] of 10,000."""
    lo = int(1000 * threestudio_C([0, 0.98, 0.02, 8000], step))
    hi = int(1000 * threestudio_C([0, 0.98, 0.50, 8000], step))
    cfg = TimestepConfig(t_min=0.02, t_max=0.98, anneal="linear", t_max_end=0.5, anneal_at=0.8)
    got = timestep_range(cfg, step, 10000, 1000)
    assert abs(got[0] - lo) <= 1 and abs(got[1] - hi) <= 1  # int() of the same float, up to rounding


@pytest.mark.parametrize("step", [0, 100, 500, 999, 1000, 1199])
def test_clip_ramp_matches_gaussiandreamer(step: int) -> None:
    """GaussianDreamer: grad_clip [0, 1.5, 2.0, 1000] over 1,200 steps = our defaults."""
    cfg = SDSConfig()
    got = clip_at(cfg.grad_clip, cfg.grad_clip_end, cfg.grad_clip_ramp, step, 1200)
    assert got == pytest.approx(threestudio_C([0, 1.5, 2.0, 1000], step), abs=1e-9)
    assert clip_at(None, 2.0, 0.5, step, 1200) is None and clip_at(1.0, None, 0.5, step, 1200) == 1.0


def test_sds_defaults_follow_gaussiandreamer() -> None:
    """t_max 0.98 -> 0.55 from step 500 of 1,200 (GaussianDreamer: ``true_global_step > 500``,
    one step later), clamp 1.5 -> 2.0."""
    cfg = SDSConfig()
    assert timestep_range(cfg.timesteps, 499, 1200, 1000) == (20, 980)
    assert timestep_range(cfg.timesteps, 500, 1200, 1000) == (20, 550)
    prior = StubPrior()
    prompts = PromptSet(PROMPT, view_dependent=False)
    guidance = SDSConfig(timesteps=fixed_t(0.5)).setup(prior, prompts)
    x, g, eps, t = run(guidance, prior, cams([0.0, 30.0]), step=600, max_steps=1200)
    e_y, e_u = stack([PROMPT] * 2), stack([""] * 2)
    c = 1.5 + 0.5 * 600 / 1000
    raw = (1 - prior.alphas_cumprod[500]) * (e_u + 100.0 * (e_y - e_u) - eps)
    assert (raw.abs() > c).any()  # the clamp is active in this check
    torch.testing.assert_close(g, raw.clamp(-c, c), rtol=1e-4, atol=1e-4)


def test_rng_state_reproduces_timesteps() -> None:
    torch.manual_seed(3)
    state = torch.get_rng_state()
    a = sample_timesteps(TimestepConfig(), 8, 0, 10, 1000, "cpu")
    torch.set_rng_state(state)
    b = sample_timesteps(TimestepConfig(), 8, 0, 10, 1000, "cpu")
    assert torch.equal(a, b)


def test_loss_gradient_weight_noisy_and_clipping() -> None:
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    g = torch.randn(3, 2, 4, 4)
    distillation_loss(x, g).backward()
    torch.testing.assert_close(x.grad, g / 3)
    ab = sd_alphas_cumprod()
    t = torch.tensor([10, 500, 999])
    torch.testing.assert_close(weight("sds", ab, t).flatten(), 1 - ab[t])
    assert torch.equal(weight("uniform", ab, t).flatten(), torch.ones(3))
    eps = torch.randn_like(x)
    xt = noisy(x.detach(), t, eps, ab)
    torch.testing.assert_close(xt[1], ab[500].sqrt() * x[1].detach() + (1 - ab[500]).sqrt() * eps[1])
    big = torch.tensor([[3.0, -4.0], [0.3, 0.4]]).view(2, 2, 1, 1)
    torch.testing.assert_close(clip_gradient(big, 1.0, "value").flatten(), torch.tensor([1.0, -1.0, 0.3, 0.4]))
    normed = clip_gradient(big, 1.0, "norm").flatten()
    torch.testing.assert_close(normed, torch.tensor([0.6, -0.8, 0.3, 0.4]))  # only the first is rescaled
    nan = torch.tensor([float("nan"), 1.0]).view(1, 2, 1, 1)
    assert clip_gradient(nan, None).flatten().tolist() == [0.0, 1.0]


# ----------------------------------------------------------------------------- SDS


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_sds_gradient_matches_formula(negative: str) -> None:
    prior = StubPrior()
    prompts = PromptSet(PROMPT, negative=negative)
    guidance = SDSConfig(guidance_scale=100.0, timesteps=fixed_t(0.5), grad_clip=None).setup(prior, prompts)
    cameras = cams([0.0, 90.0, 180.0])
    x, g, eps, t = run(guidance, prior, cameras)
    assert len(prior.calls) == 1 and prior.calls[0]["k"] == 2 and prior.calls[0]["b"] == 3
    assert t.tolist() == [500] * 3
    e_y = stack(prompts.for_cameras(cameras))
    e_u = stack([negative] * 3)
    w = 1 - prior.alphas_cumprod[500]
    expected = w * (e_u + 100.0 * (e_y - e_u) - eps)
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-4)
    assert prior.calls[0]["prompts"][1] == [negative] * 3


def test_sds_scale_one_skips_the_unconditional() -> None:
    """At s = 1, e_cfg = e(y): SDS asks the prior for the conditional prediction only."""
    prior = StubPrior()
    prompts = PromptSet(PROMPT, negative="blurry")
    guidance = SDSConfig(guidance_scale=1.0, timesteps=fixed_t(0.5), grad_clip=None).setup(prior, prompts)
    cameras = cams([0.0, 90.0, 180.0])
    x, g, eps, t = run(guidance, prior, cameras)
    assert len(prior.calls) == 1 and prior.calls[0]["k"] == 1
    w = 1 - prior.alphas_cumprod[500]
    torch.testing.assert_close(g, w * (stack(prompts.for_cameras(cameras)) - eps), rtol=1e-5, atol=1e-5)


def test_sds_uniform_weighting_and_clip() -> None:
    prior = StubPrior()
    prompts = PromptSet(PROMPT, view_dependent=False)
    guidance = SDSConfig(guidance_scale=7.5, timesteps=fixed_t(0.3), weighting="uniform", grad_clip=0.5, grad_clip_end=None).setup(prior, prompts)
    x, g, eps, t = run(guidance, prior, cams([0.0, 30.0]))
    e_y, e_u = stack([PROMPT] * 2), stack([""] * 2)
    expected = (e_u + 7.5 * (e_y - e_u) - eps).clamp(-0.5, 0.5)
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-4)
    assert prior.calls[0]["prompts"][0] == [PROMPT, PROMPT]


# ----------------------------------------------------------------------------- NFSD


@pytest.mark.parametrize("frac", [0.1, 0.5])
def test_nfsd_gradient_both_sides_of_switch(frac: float) -> None:
    prior = StubPrior()
    prompts = PromptSet(PROMPT)
    guidance = NFSDConfig(timesteps=fixed_t(frac)).setup(prior, prompts)
    cameras = cams([10.0, 100.0])
    x, g, eps, t = run(guidance, prior, cameras)
    assert len(prior.calls) == 1 and prior.calls[0]["k"] == 3 and prior.calls[0]["b"] == 2
    assert prior.calls[0]["prompts"][2] == [NFSD_NEGATIVE_PROMPT] * 2  # default negative
    e_y, e_0, e_neg = stack(prompts.for_cameras(cameras)), stack(["", ""]), stack([NFSD_NEGATIVE_PROMPT] * 2)
    tt = int(t[0])
    assert (tt < 200) == (frac == 0.1)
    d_d = e_0 if tt < 200 else e_0 - e_neg
    expected = (1 - prior.alphas_cumprod[tt]) * (7.5 * (e_y - e_0) + d_d)
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-4)


def test_nfsd_switch_is_per_sample_and_keeps_user_negative(monkeypatch: pytest.MonkeyPatch) -> None:
    import sds3d.guidance.common as common

    monkeypatch.setattr(common, "sample_timesteps", lambda *a, **k: torch.tensor([150, 600]))
    prior = StubPrior()
    prompts = PromptSet(PROMPT, negative="ugly", view_dependent=False)
    guidance = NFSDConfig(guidance_scale=2.0, weighting="uniform").setup(prior, prompts)
    x, g, eps, t = run(guidance, prior, cams([0.0, 0.0]))
    e_y, e_0, e_neg = StubPrior.pred(PROMPT), StubPrior.pred(""), StubPrior.pred("ugly")
    torch.testing.assert_close(g[0], 2.0 * (e_y - e_0) + e_0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g[1], 2.0 * (e_y - e_0) + e_0 - e_neg, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- CSD


@pytest.mark.parametrize(("step", "a_neg", "a_0"), [(0, 0.0, -1.0), (25, -0.5, -0.5), (50, -1.0, 0.0), (99, -1.0, 0.0)])
def test_csd_schedule(step: int, a_neg: float, a_0: float) -> None:
    prior = StubPrior()
    prompts = PromptSet(PROMPT, negative="ugly")
    guidance = CSDConfig(normalize=False, timesteps=fixed_t(0.5)).setup(prior, prompts)
    cameras = cams([0.0, 170.0])
    x, g, eps, t = run(guidance, prior, cameras, step=step, max_steps=100)
    assert len(prior.calls) == 1 and prior.calls[0]["k"] == 3 and prior.calls[0]["b"] == 2
    e_y, e_neg, e_0 = stack(prompts.for_cameras(cameras)), stack(["ugly"] * 2), stack([""] * 2)
    torch.testing.assert_close(g, e_y + a_neg * e_neg + a_0 * e_0, rtol=1e-4, atol=1e-4)


def test_csd_normalization_unit_rms_same_direction() -> None:
    prior = StubPrior()
    prompts = PromptSet(PROMPT, negative="ugly")
    cfg = CSDConfig(normalize=True, normalization="sample", guidance_scale=2.0, timesteps=fixed_t(0.5))
    guidance = cfg.setup(prior, prompts)
    cameras = cams([0.0, 60.0, 170.0])
    x, g, eps, t = run(guidance, prior, cameras, step=10, max_steps=100)
    rms = g.pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.full((3,), 2.0), rtol=1e-4, atol=1e-4)
    raw = stack(prompts.for_cameras(cameras)) - 0.2 * stack(["ugly"] * 3) - 0.8 * stack([""] * 3)
    cos = torch.nn.functional.cosine_similarity(g.flatten(1), raw.flatten(1))
    torch.testing.assert_close(cos, torch.ones(3), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- Perp-Neg


def test_csd_batch_normalization_matches_the_authors() -> None:
    """CVMI-Lab/Classifier-Score-Distillation deep_floyd_simple_guidance.py:
    grad = grad / (grad.norm(2) + 1e-8) over the whole batch ('batch_l2'); 'batch' is that
    times sqrt(numel) (unit RMS), keeping the samples' relative sizes, unlike 'sample'."""
    prior = StubPrior()
    prompts = PromptSet(PROMPT, negative="ugly")
    cameras = cams([0.0, 60.0, 170.0])
    raw = stack(prompts.for_cameras(cameras)) - 0.2 * stack(["ugly"] * 3) - 0.8 * stack([""] * 3)
    raw = raw * torch.tensor([1.0, 3.0, 0.5]).view(3, 1, 1, 1)  # samples of different sizes
    authors = raw / (raw.norm(2) + 1e-8)
    torch.testing.assert_close(normalize_gradient(raw, "batch_l2"), authors)
    torch.testing.assert_close(normalize_gradient(raw, "batch"), authors * math.sqrt(raw.numel()), rtol=1e-5, atol=1e-6)
    per_sample = normalize_gradient(raw, "sample").pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(per_sample, torch.ones(3))
    batch = normalize_gradient(raw, "batch")
    torch.testing.assert_close(batch.pow(2).mean().sqrt(), torch.tensor(1.0))
    ratio = batch.flatten(1).norm(dim=1) / raw.flatten(1).norm(dim=1)
    torch.testing.assert_close(ratio, ratio[0].expand(3))  # one factor for the whole batch
    # end to end with the default config (normalization 'batch'), at step 10 of 100
    guidance = CSDConfig(timesteps=fixed_t(0.5)).setup(prior, prompts)
    x, g, eps, t = run(guidance, prior, cameras, step=10, max_steps=100)
    e = stack(prompts.for_cameras(cameras)) - 0.2 * stack(["ugly"] * 3) - 0.8 * stack([""] * 3)
    torch.testing.assert_close(g, e / e.pow(2).mean().sqrt(), rtol=1e-4, atol=1e-5)
    with pytest.raises(SDS3DError, match="normalization"):
        normalize_gradient(raw, "layer")


def expected_pn_weights(az: float, el: float) -> tuple[float, float]:
    f = lambda abc, r: abc[0] * math.exp(-abc[1] * r) + abc[2]  # noqa: E731
    fs, sb, fsb = (4.0, 0.5, -2.426), (1.0, 0.5, -0.606), (1.0, 0.5, 0.967)
    if el > 60:
        return 0.0, 0.0
    a = abs(az)
    if a < 90:
        r = 1 - a / 90
        return -f(fs, r), -f(fs, 1 - r)
    r = 2 - a / 90
    return -f(fsb, r), -f(sb, r)


def test_perp_neg_weights_and_projection() -> None:
    azs, els = [0.0, 60.0, -120.0, 180.0, 100.0], [15.0, 15.0, 15.0, 15.0, 70.0]
    w = perp_neg_weights(cams(azs, els), PromptSet(PROMPT, perp_neg=True))
    expected = torch.tensor([expected_pn_weights(a, e) for a, e in zip(azs, els)])
    torch.testing.assert_close(w, expected)
    assert abs(float(w[0, 0])) < 1e-3 and float(w[3, 0]) == pytest.approx(-1.967, abs=1e-3)
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    p = perpendicular_component(a, b)
    assert (p * b).sum(dim=(1, 2, 3)).abs().max() < 1e-4
    torch.testing.assert_close(perpendicular_component(b, b), torch.zeros_like(b), atol=1e-5, rtol=0)


def test_perp_neg_sds_gradient() -> None:
    prior = StubPrior()
    prompts = PromptSet(PROMPT, perp_neg=True)
    azs, els = [0.0, 60.0, 180.0, 100.0], [15.0, 15.0, 15.0, 70.0]
    cameras = cams(azs, els)
    guidance = SDSConfig(guidance_scale=10.0, timesteps=fixed_t(0.5), grad_clip=None).setup(prior, prompts)
    x, g, eps, t = run(guidance, prior, cameras)
    assert len(prior.calls) == 1 and prior.calls[0]["k"] == 4 and prior.calls[0]["b"] == 4
    front, side = view_prompt(PROMPT, "front"), view_prompt(PROMPT, "side")
    assert prior.calls[0]["prompts"][2:] == [[front] * 4, [side] * 4]
    e_u = StubPrior.pred("")
    w_t = 1 - prior.alphas_cumprod[500]
    for i, (az, el) in enumerate(zip(azs, els)):
        e_pos = StubPrior.pred(prompts.for_cameras(cameras[i])[0]) - e_u
        wf, ws = expected_pn_weights(az, el)
        delta = e_pos.clone()
        for wi, neg in ((wf, front), (ws, side)):
            d = StubPrior.pred(neg) - e_u
            delta += wi * (d - (d * e_pos).sum() / (e_pos * e_pos).sum() * e_pos)
        expected = w_t * (e_u + 10.0 * delta - eps[i])
        torch.testing.assert_close(g[i], expected, rtol=1e-4, atol=1e-4)
    # the overhead view (weights 0) is plain SDS
    e_ov = StubPrior.pred(view_prompt(PROMPT, "overhead"))
    torch.testing.assert_close(g[3], w_t * (e_u + 10.0 * (e_ov - e_u) - eps[3]), rtol=1e-4, atol=1e-4)


def test_perp_neg_nfsd_csd_one_call_five_conditionings() -> None:
    for cfg in (NFSDConfig(timesteps=fixed_t(0.5)), CSDConfig(timesteps=fixed_t(0.5), normalize=False)):
        prior = StubPrior()
        prompts = PromptSet(PROMPT, negative="ugly", perp_neg=True)
        cameras = cams([180.0])
        x, g, eps, t = run(cfg.setup(prior, prompts), prior, cameras, step=0)
        assert len(prior.calls) == 1 and prior.calls[0]["k"] == 5
        e_y, e_0, e_neg = StubPrior.pred(view_prompt(PROMPT, "back")), StubPrior.pred(""), StubPrior.pred("ugly")
        e_pos = e_y - e_0
        wf, ws = expected_pn_weights(180.0, 15.0)
        term = torch.zeros_like(e_pos)
        for wi, neg in ((wf, view_prompt(PROMPT, "front")), (ws, view_prompt(PROMPT, "side"))):
            d = StubPrior.pred(neg) - e_0
            term += wi * (d - (d * e_pos).sum() / (e_pos * e_pos).sum() * e_pos)
        if isinstance(cfg, NFSDConfig):
            expected = (1 - prior.alphas_cumprod[500]) * (7.5 * (e_pos + term) + e_0 - e_neg)
        else:
            expected = e_y - e_0 + 3.0 * term  # step 0: a_neg = 0, a_0 = -1
        torch.testing.assert_close(g[0], expected, rtol=1e-4, atol=1e-4)


def test_perp_neg_needs_view_dependent_prompts() -> None:
    with pytest.raises(SDS3DError, match="view-dependent"):
        SDSConfig().setup(StubPrior(), PromptSet(PROMPT, perp_neg=True, view_dependent=False))


# ----------------------------------------------------------------------------- real tiny prior


def test_methods_run_three_steps_with_tiny_sd(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from sds3d.priors.stable_diffusion import load_stable_diffusion

    prior = load_stable_diffusion(str(tiny_sd_dir), torch.device("cpu"), embedding_cache_dir=tmp_path)
    prompts = PromptSet(PROMPT, perp_neg=True)
    cameras = cams([120.0])
    for cfg in (SDSConfig(), NFSDConfig(), CSDConfig()):
        guidance = cfg.setup(prior, prompts)
        assert isinstance(guidance, Guidance)
        rgb = torch.full((1, 16, 16, 3), 0.5, requires_grad=True)
        opt = torch.optim.Adam([rgb], lr=0.01)
        for step in range(3):
            out = guidance(rgb, cameras, step, 3)
            opt.zero_grad()
            out.loss.backward()
            assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
            opt.step()
        assert guidance.state_dict() == {}


def test_methods_run_three_steps_with_exemplar_prior(tmp_path: Path) -> None:
    from sds3d.guidance.vsd import VSDConfig
    from sds3d.priors.exemplar import ExemplarConfig, ExemplarPrior
    from sds3d.priors.exemplar_library import builtin_library

    prior = ExemplarPrior(builtin_library()[:2], torch.device("cpu"), ExemplarConfig(resolution=16, num_groups=2, cache_dir=tmp_path))
    prompts = PromptSet(prior.prompts[0], perp_neg=True)
    cameras = cams([20.0, 150.0])
    for cfg in (SDSConfig(), NFSDConfig(), CSDConfig(), VSDConfig()):
        guidance = cfg.setup(prior, prompts)
        rgb = torch.full((2, 16, 16, 3), 0.5, requires_grad=True)
        opt = torch.optim.Adam([rgb], lr=0.01)
        for step in range(3):
            out = guidance(rgb, cameras, step, 3)
            opt.zero_grad()
            out.loss.backward()
            assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
            opt.step()
