"""Stable Diffusion (latent diffusion) as a score-distillation prior.

Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022;
used as the 2D prior of DreamFusion-style score distillation (Poole et al., 2022).

    x   = vae.encode(2 rgb - 1).latent_dist.mean * scaling_factor      (renders resized to
          unet.sample_size * vae_scale_factor, 512 for SD-2.1-base, bilinear, no antialias)
    x_t = sqrt(ab_t) x + sqrt(1 - ab_t) eps,  ab = scheduler.alphas_cumprod
    eps(x_t; y) = unet(x_t, t, text_encoder(tokenize(y)))               (epsilon models)
    eps = sqrt(ab_t) v + sqrt(1 - ab_t) x_t                             (v-prediction models)
    eps = (x_t - sqrt(ab_t) x0) / sqrt(1 - ab_t)                        ("sample" models)

Encoding uses the posterior mean of the VAE, not a sample (threestudio samples): the SD VAE's
posterior std is tiny, and the mean makes encoding deterministic. All K conditionings of a
step (cond / uncond / negative) run in ONE UNet call on the K*B batch.

Text embeddings ([B, 77, D], the last hidden state of the CLIP text encoder) are cached in
memory and on disk (one safetensors file per model + dtype + prompt; folder
``embedding_cache_dir``, else $SDS3D_EMBEDDING_CACHE, else ~/.cache/sds3d/embeddings).
:meth:`StableDiffusionPrior.precompute` encodes a run's prompts and frees the text encoder;
an unseen prompt later reloads it for that one encoding.

Speed options (issue 9, all off by default; see :func:`apply_speed_options`): channels-last
UNet/VAE weights, ``torch.compile`` of the UNet, and a TAESD-style tiny autoencoder
(diffusers ``AutoencoderTiny``, whose latents are already in SD's scaled latent space) in
place of the full VAE encoder (decoding for previews keeps the full VAE). TF32 is enabled for
float32 matmuls on CUDA at load.
"""

from __future__ import annotations

import gc
import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.checkpoint import atomic_write
from sds3d.priors.loading import load_part, local_model_dir
from sds3d.types import SDS3DError, to_epsilon


def default_embedding_cache_dir() -> Path:
    env = os.environ.get("SDS3D_EMBEDDING_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sds3d" / "embeddings"


# The published SD-2.1-base UNet (also the base of MVDream's multi-view UNet).
SD21_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
)


def load_stable_diffusion(
    model: str,
    device: torch.device,
    *,
    dtype: torch.dtype | None = None,
    cache_dir: Path | None = None,
    embedding_cache_dir: Path | None = None,
    channels_last: bool = False,
    compile_unet: bool = False,
    tiny_vae: str | None = None,
) -> StableDiffusionPrior:
    """Load a diffusers SD folder or hub id (unet/ vae/ text_encoder/ tokenizer/ scheduler/).

    fp16 on CUDA and fp32 elsewhere unless ``dtype`` is given; every module frozen, in eval.
    ``channels_last``, ``compile_unet`` and ``tiny_vae`` are the speed options of
    :func:`apply_speed_options`.
    """
    from diffusers import UNet2DConditionModel

    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        enable_tf32()
    unet = load_part(UNet2DConditionModel.from_pretrained, model, "unet", cache_dir, dtype=dtype)
    prior = assemble_prior(model, unet, device, dtype, cache_dir, embedding_cache_dir)
    apply_speed_options(prior, channels_last=channels_last, compile_unet=compile_unet, tiny_vae=tiny_vae)
    return prior


def assemble_prior(
    model: str, unet: Any, device: torch.device, dtype: torch.dtype, cache_dir: Path | None, embedding_cache_dir: Path | None
) -> StableDiffusionPrior:
    """The prior around a loaded ``unet``, with the scheduler, tokenizer and VAE of the SD folder
    or hub id ``model``; UNet and VAE frozen on ``device``; text embeddings cached in
    ``embedding_cache_dir`` (else the default). Shared by the SD and MVDream loaders."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from transformers import CLIPTokenizer

    scheduler = load_part(DDPMScheduler.from_pretrained, model, "scheduler", cache_dir)
    tokenizer = load_part(CLIPTokenizer.from_pretrained, model, "tokenizer", cache_dir)
    vae = load_part(AutoencoderKL.from_pretrained, model, "vae", cache_dir, dtype=dtype)
    return StableDiffusionPrior(
        model_id=model,
        unet=freeze(unet, device),
        vae=freeze(vae, device),
        scheduler=scheduler,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        cache_dir=cache_dir,
        embedding_cache_dir=Path(embedding_cache_dir) if embedding_cache_dir else default_embedding_cache_dir(),
    )


def freeze(module: torch.nn.Module, device: torch.device) -> Any:
    """Move to ``device``, eval mode, no gradients."""
    module.to(device)
    module.eval()
    module.requires_grad_(False)
    return module


class StableDiffusionPrior:
    """The :class:`sds3d.types.Prior` for Stable Diffusion; ``condition`` returns [B,77,D]."""

    num_views = 1

    def __init__(
        self,
        model_id: str,
        unet: Any,
        vae: Any,
        scheduler: Any,
        tokenizer: Any,
        device: torch.device,
        dtype: torch.dtype,
        cache_dir: Path | None,
        embedding_cache_dir: Path,
        text_encoder: Any | None = None,
    ) -> None:
        """``text_encoder``: an in-memory encoder (``encoder(ids)[0]`` -> [n,77,D]) instead of
        loading ``model_id/text_encoder`` (the speed benchmark's random-weight models)."""
        self.model_id = model_id
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.cache_dir = cache_dir
        self.embedding_cache_dir = embedding_cache_dir
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.prediction_type = str(scheduler.config.prediction_type)
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise SDS3DError(f"unsupported prediction_type {self.prediction_type!r} in {model_id}/scheduler: use an epsilon or v_prediction model")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.input_size = int(unet.config.sample_size) * self.vae_scale_factor
        self.text_encoder: Any | None = None  # loaded lazily, freed by precompute()
        self.text_encoder_calls = 0  # forward passes of the text encoder (for tests and logs)
        self._embeddings: dict[str, Tensor] = {}
        self._free_after_encoding = False
        self._cache_key = _model_cache_key(model_id)
        self.tiny_vae: Any | None = None  # set by apply_speed_options(tiny_vae=...)
        if text_encoder is not None:
            self.text_encoder = freeze(text_encoder, device)
        else:
            self._load_text_encoder()

    # ------------------------------------------------------------------ images <-> latents

    def encode_images(self, rgb: Tensor) -> Tensor:
        """[B,H,W,3] in [0,1] -> latents [B,4,S/8,S/8] float32, differentiable w.r.t. rgb."""
        x = rgb.permute(0, 3, 1, 2)
        size = (self.input_size, self.input_size)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        x = (x * 2.0 - 1.0).to(self.dtype)
        if self.tiny_vae is not None:  # TAESD latents are already scaled (scaling_factor 1.0)
            return (self.tiny_vae.encode(x).latents * self.tiny_vae.config.scaling_factor).float()
        latents = self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor
        return latents.float()

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Latents [B,4,h,w] -> rgb [B,S,S,3] float32 in [0,1]."""
        images = self.vae.decode((x / self.vae.config.scaling_factor).to(self.dtype)).sample
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    # ------------------------------------------------------------------ text conditioning

    def condition(self, prompts: Sequence[str]) -> Tensor:
        """Text embeddings [len(prompts), 77, D] in the model dtype (memory + disk cached)."""
        todo = [p for p in dict.fromkeys(prompts) if p not in self._embeddings]
        todo = [p for p in todo if not self._load_cached(p)]
        if todo:
            self._encode(todo)
            if self._free_after_encoding:
                self.free_text_encoder()
        return torch.stack([self._embeddings[p] for p in prompts])

    def precompute(self, prompts: list[str]) -> None:
        """Encode every prompt of the run (and ""), then free the text encoder."""
        self.condition(list(dict.fromkeys([""] + list(prompts))))
        self._free_after_encoding = True
        self.free_text_encoder()

    def free_text_encoder(self) -> None:
        if self.text_encoder is None:
            return
        self.text_encoder = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _load_text_encoder(self) -> None:
        from transformers import CLIPTextModel

        encoder = load_part(CLIPTextModel.from_pretrained, self.model_id, "text_encoder", self.cache_dir, dtype=self.dtype)
        self.text_encoder = freeze(encoder, self.device)

    @torch.no_grad()
    def _encode(self, prompts: list[str], chunk: int = 32) -> None:
        if self.text_encoder is None:
            self._load_text_encoder()
        assert self.text_encoder is not None
        for i in range(0, len(prompts), chunk):
            part = prompts[i : i + chunk]
            ids = self.tokenizer(
                part, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids.to(self.device)
            self.text_encoder_calls += 1
            hidden = self.text_encoder(ids)[0].to(self.dtype)
            for prompt, emb in zip(part, hidden):
                self._embeddings[prompt] = emb
                self._save_cached(prompt, emb)

    def _cache_path(self, prompt: str) -> Path:
        key = f"{self._cache_key}\n{self.dtype}\n{prompt}".encode()
        return self.embedding_cache_dir / f"{hashlib.sha256(key).hexdigest()[:32]}.safetensors"

    def _load_cached(self, prompt: str) -> bool:
        from safetensors.torch import load_file

        path = self._cache_path(prompt)
        if not path.is_file():
            return False
        try:
            emb = load_file(path)["embedding"]
        except Exception:  # noqa: BLE001 - a damaged cache file is re-encoded
            return False
        self._embeddings[prompt] = emb.to(device=self.device, dtype=self.dtype)
        return True

    def _save_cached(self, prompt: str, emb: Tensor) -> None:
        from safetensors.torch import save

        data = save({"embedding": emb.detach().to("cpu").contiguous()}, metadata={"model": self.model_id, "prompt": prompt})
        try:
            self.embedding_cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self._cache_path(prompt), lambda f: f.write(data))
        except (OSError, SDS3DError) as e:
            warnings.warn(f"text-embedding cache not written ({e}); embeddings are recomputed next run", stacklevel=2)

    # ------------------------------------------------------------------ denoiser

    def unet_forward(self, x_t: Tensor, t: Tensor, embeddings: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """The raw model output (eps, v or x0, per ``prediction_type``) as float32; keeps grad."""
        if class_labels is not None:
            class_labels = class_labels.to(self.dtype)
        out = self.unet(
            x_t.to(self.dtype), t.to(self.device), encoder_hidden_states=embeddings.to(self.dtype), class_labels=class_labels
        ).sample
        return out.float()

    def to_epsilon(self, model_output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Convert a raw model output to an epsilon prediction (float32; :func:`sds3d.types.to_epsilon`)."""
        return to_epsilon(model_output, x_t, t, self.alphas_cumprod, self.prediction_type)

    @torch.no_grad()
    def predict_noise(
        self, x_t: Tensor, t: Tensor, conditions: Sequence[Any], cameras: Cameras | None = None,
        background: Tensor | None = None,
    ) -> Tensor:
        """eps(x_t; c_k) for the K conditionings in one UNet call: [K,B,C,h,w] float32."""
        k, b = len(conditions), x_t.shape[0]
        for c in conditions:
            if c.shape[0] != b:
                raise ValueError(f"conditioning batch {c.shape[0]} != x_t batch {b}")
        x_in = x_t.repeat(k, 1, 1, 1)
        t_in = t.to(self.device).long().repeat(k)
        out = self.unet_forward(x_in, t_in, torch.cat(list(conditions)))
        return self.to_epsilon(out, x_in, t_in).view(k, b, *x_t.shape[1:])


def _model_cache_key(model: str) -> str:
    """Hub id, or a local folder's path plus the size/mtime of its text encoder files."""
    local = local_model_dir(model)
    if local is None:
        return model
    stats = []
    for sub in ("text_encoder", "tokenizer"):
        for f in sorted((local / sub).iterdir()):
            if f.is_file():
                st = f.stat()
                stats.append(f"{sub}/{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return f"{local}|{'|'.join(stats)}"


# ---------------------------------------------------------------------- speed options (issue 9)


def enable_tf32() -> None:
    """TF32 tensor cores for float32 matmuls and convolutions on CUDA (fp16/bf16 unaffected)."""
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True


def load_tiny_autoencoder(model: str, device: torch.device, dtype: torch.dtype) -> Any:
    """A diffusers ``AutoencoderTiny`` (TAESD, e.g. ``madebyollin/taesd``) from a folder or hub id."""
    from diffusers import AutoencoderTiny

    from sds3d.priors.loading import hub_offline

    local = Path(model).expanduser()
    try:
        module = AutoencoderTiny.from_pretrained(
            local if local.is_dir() else model, local_files_only=local.is_dir() or hub_offline(), dtype=dtype
        )
    except Exception as e:  # noqa: BLE001 - hub, file and config errors all get the one line
        raise SDS3DError(
            f"cannot load the tiny autoencoder {model!r} ({type(e).__name__}: {str(e).strip().splitlines()[0][:100] if str(e).strip() else ''}); "
            "pass a diffusers AutoencoderTiny folder or hub id such as madebyollin/taesd, or drop the tiny-VAE option"
        ) from e
    return freeze(module, device)


def apply_speed_options(
    prior: StableDiffusionPrior,
    *,
    channels_last: bool = False,
    compile_unet: bool = False,
    tiny_vae: str | torch.nn.Module | None = None,
) -> None:
    """Speed options, in place: channels-last UNet/VAE weights; ``torch.compile`` of the UNet
    (``nn.Module.compile``: the module keeps its type and attributes; the first calls compile);
    ``tiny_vae`` (a folder/hub id or a module) encodes renders instead of the full VAE encoder."""
    if channels_last:
        prior.unet.to(memory_format=torch.channels_last)
        prior.vae.to(memory_format=torch.channels_last)
    if isinstance(tiny_vae, str):
        prior.tiny_vae = load_tiny_autoencoder(tiny_vae, prior.device, prior.dtype)
    elif tiny_vae is not None:
        if any(p.dtype != prior.dtype for p in tiny_vae.parameters()):
            tiny_vae = tiny_vae.to(prior.dtype)
        prior.tiny_vae = freeze(tiny_vae, prior.device)
    if prior.tiny_vae is not None and channels_last:
        prior.tiny_vae.to(memory_format=torch.channels_last)
    if compile_unet:
        prior.unet.compile()
