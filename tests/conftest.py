"""Shared fixtures: tiny random Stable-Diffusion-2.x-like diffusers pipelines saved to disk.

``tiny_sd_dir`` is a real diffusers folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/
model_index.json) with random weights and the SD-2.1-base scheduler (scaled-linear betas
0.00085..0.012, 1000 steps, epsilon prediction). It loads through the ordinary
``from_pretrained(..., local_files_only=True)`` path, so every test that uses it exercises
the same code as a real run. Sizes: UNet block_out_channels (4, 8), latents 4x8x8, renders
resized to 16x16, a 2-layer CLIP text encoder with hidden size 32.

``EXEMPLAR_CLI_FAST`` holds the command-line options of a small, fast exemplar run on the CPU
(32x32 renders, 256 Gaussians, tiny exports) for the end-to-end CLI tests.

An autouse session fixture points the text-embedding disk cache (``SDS3D_EMBEDDING_CACHE``)
at a temporary folder so tests never write into ``~/.cache``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sds3d.bench.scale_models import TINY_TEXT_ENCODER, write_tiny_clip_tokenizer
from sds3d.priors.archs import TINY_UNET, TINY_VAE

# Every run in the suite uses the thread count torch starts with (sds3d.threads would otherwise
# pick one from the machine's load per run, and runs compared bit for bit must use the same).
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

TINY_SEED = 0
EXEMPLAR_CLI_FAST = [
    "--prior", "exemplar", "--device", "cpu", "--resolution", "32", "--batch-size", "2",
    "--gaussians.num-init", "256", "--gaussians.init-opacity", "0.5", "--turntable-frames", "4",
    "--turntable-resolution", "32", "--preview-every", "0", "--export.resolution", "32",
    "--export.turntable-frames", "4", "--export.turntable-resolution", "32",
    "--export.eval-views", "2", "--export.eval-resolution", "32",
]  # fmt: skip


def build_tiny_sd_pipeline(folder: Path, prediction_type: str = "epsilon", seed: int = TINY_SEED) -> Path:
    """Write a tiny random SD-2.x-like pipeline to ``folder`` (deterministic for a seed)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_size = write_tiny_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            **TINY_TEXT_ENCODER,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SD-2.1-base-like diffusers folder (epsilon prediction)."""
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd"), "epsilon")


@pytest.fixture(scope="session")
def tiny_sd_vpred_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny pipeline (same weights) with ``prediction_type="v_prediction"``."""
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd_vpred"), "v_prediction")


@pytest.fixture(scope="session", autouse=True)
def _embedding_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the text-embedding disk cache of every test out of ``~/.cache``."""
    old = os.environ.get("SDS3D_EMBEDDING_CACHE")
    os.environ["SDS3D_EMBEDDING_CACHE"] = str(tmp_path_factory.mktemp("embedding_cache"))
    yield
    if old is None:
        os.environ.pop("SDS3D_EMBEDDING_CACHE", None)
    else:
        os.environ["SDS3D_EMBEDDING_CACHE"] = old


@pytest.fixture
def exact_float32() -> Iterator[None]:
    """Full-precision float32 matmuls/convolutions for the test (no TF32, which a CUDA run
    enables process-wide at model load), restored afterwards."""
    old = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old[1], old[2]


def assert_phases(summary: dict) -> None:
    """A finished run's phases: every one present, none negative, adding up to ``seconds``."""
    from sds3d.timing import PHASES

    phases = summary["phases"]
    assert list(phases) == list(PHASES), phases
    assert all(v >= 0 for v in phases.values()), phases
    assert abs(sum(phases.values()) - summary["seconds"]) < 1e-6
    assert phases["train"] > 0 and phases["export"] > 0
    assert abs(summary["load_seconds"] - phases["load"]) < 1e-9 and abs(summary["export_seconds"] - phases["export"]) < 1e-9
