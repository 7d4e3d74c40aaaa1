"""The speed benchmark (tiny random SD on CPU) and the Stable Diffusion prior's speed options."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sds3d.priors.archs import SD21_UNET, build_sd_prior
from sds3d.bench.speed import PHASES, SpeedConfig, count_flops, format_table, run_speed_bench
from sds3d.scenes.gaussians import GaussiansConfig
from sds3d.types import SDS3DError

CPU = torch.device("cpu")


def test_count_flops_is_exact_for_a_matmul_and_its_backward() -> None:
    a = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    # forward + grad of a (one more matmul of the same size); works with autograd.grad inside
    def step() -> None:
        y = ((a @ b) ** 2).sum()
        (g,) = torch.autograd.grad(y, a, create_graph=True)
        g.sum().backward()

    assert count_flops(step) >= 2 * (2 * 8 * 16 * 4)


def test_sd21_unet_config_has_the_published_size() -> None:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_UNET)
    n = sum(p.numel() for p in unet.parameters())
    assert 865e6 < n < 867e6  # SD-2.1-base UNet: 865.9M parameters


def test_speed_bench_tiny_cpu(tmp_path: Path) -> None:
    pytest.importorskip("sds3d.guidance.sds")
    out = tmp_path / "speed.json"
    cfg = SpeedConfig(
        arch="tiny", device="cpu", guidance=("sds",), scene=("gaussians",), resolution=16, batch_size=1, warmup=1, iters=2, json_out=out,
        gaussians=GaussiansConfig(num_init=256),
    )
    result = run_speed_bench(cfg)
    assert result["arch"] == "tiny" and result["dtype"] == "float32" and not result["skipped"]
    assert json.loads(out.read_text())["rows"][0]["guidance"] == "sds"
    (row,) = result["rows"]
    keys = ["step_ms", "instrumented_ms", "floor_ms", "flop_floor_ms", "gflop"] + [f"{p}_ms" for p in PHASES]
    for k in keys:
        assert math.isfinite(row[k]) and row[k] > 0, k
    assert row["other_ms"] >= 0
    # the phases add up to the (instrumented) step they were measured in
    total = sum(row[f"{p}_ms"] for p in PHASES) + row["other_ms"]
    assert total == pytest.approx(row["instrumented_ms"], rel=1e-9)
    assert row["unet_calls"] == 1  # SDS: cond + uncond in ONE batched UNet call
    assert row["floor_ms"] <= row["step_ms"] and row["step_over_floor"] >= 1
    assert row["peak_mb"] is None  # CPU: n/a
    assert "| sds | gaussians | 16 |" in format_table(result)


def test_a_failing_row_is_reported_and_the_other_rows_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    cfg = SpeedConfig(
        arch="tiny", device="cpu", guidance=("mvsds", "sds"), scene=("gaussians",), resolution=16, batch_size=1,
        warmup=0, iters=1, json_out=out, gaussians=GaussiansConfig(num_init=64),
    )
    result = run_speed_bench(cfg)  # mvsds needs groups of 4 views: its row fails, SDS still runs
    assert [r["guidance"] for r in result["rows"]] == ["sds"]
    (skip,) = result["skipped"]
    assert skip["guidance"] == "mvsds" and "SDS3DError" in skip["reason"] and "multiple of 4" in skip["reason"]
    assert json.loads(out.read_text())["skipped"] == result["skipped"]


def test_speed_config_rejects_bad_values() -> None:
    with pytest.raises(SDS3DError, match="multiple of 8"):
        SpeedConfig(resolution=30)
    with pytest.raises(SDS3DError, match="fp16 needs a CUDA"):
        run_speed_bench(SpeedConfig(device="cpu", dtype="fp16"))


def test_random_prior_conditions_and_speed_options(tmp_path: Path) -> None:
    prior = build_sd_prior("tiny", CPU, torch.float32, tmp_path / "emb")
    emb = prior.condition(["a cat", "", "a cat"])
    assert emb.shape == (3, 77, 32)
    assert torch.equal(emb[0], emb[2]) and not torch.allclose(emb[0], emb[1])
    torch.manual_seed(0)
    rgb = torch.rand(2, 24, 24, 3)
    x = prior.encode_images(rgb)
    t = torch.tensor([100, 700])
    e = prior.predict_noise(x, t, [emb[:2], emb[1:]])
    # channels-last weights: the same numbers
    fast = build_sd_prior("tiny", CPU, torch.float32, tmp_path / "emb2", channels_last=True)
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast.encode_images(rgb), x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.predict_noise(x, t, [emb[:2], emb[1:]]), e, rtol=1e-4, atol=1e-5)
    # tiny autoencoder: used for encoding (other numbers, same latent shape), differentiable
    taesd = build_sd_prior("tiny", CPU, torch.float32, tmp_path / "emb3", tiny_vae=True)
    rgb_g = rgb.clone().requires_grad_(True)
    z = taesd.encode_images(rgb_g)
    assert z.shape == x.shape and not torch.allclose(z, x)
    z.sum().backward()
    assert rgb_g.grad is not None and rgb_g.grad.abs().sum() > 0


def test_tiny_vae_loads_from_a_folder(tmp_path: Path, tiny_sd_dir: Path) -> None:
    from diffusers import AutoencoderTiny

    from sds3d.priors.archs import TINY_TAESD
    from sds3d.priors.stable_diffusion import load_stable_diffusion

    AutoencoderTiny(**TINY_TAESD).save_pretrained(tmp_path / "taesd")
    prior = load_stable_diffusion(str(tiny_sd_dir), CPU, embedding_cache_dir=tmp_path / "emb", tiny_vae=str(tmp_path / "taesd"))
    assert isinstance(prior.tiny_vae, AutoencoderTiny)
    rgb = torch.rand(1, 16, 16, 3)  # already the input size: no resize
    z = prior.encode_images(rgb)
    with torch.no_grad():
        direct = prior.tiny_vae.encode(rgb.permute(0, 3, 1, 2) * 2 - 1).latents
    assert z.shape == (1, 4, 8, 8)
    torch.testing.assert_close(z, direct)
    with pytest.raises(SDS3DError, match="tiny autoencoder"):
        load_stable_diffusion(str(tiny_sd_dir), CPU, embedding_cache_dir=tmp_path / "emb", tiny_vae=str(tmp_path / "nothing-here"))
