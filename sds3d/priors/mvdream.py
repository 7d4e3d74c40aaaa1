"""MVDream: a camera-conditioned 4-view latent diffusion prior.

Shi et al., "MVDream: Multi-view Diffusion for 3D Generation", ICLR 2024. The SD-2.1-base UNet
with two changes, trained on 4 views of an object 90 degrees apart:

    emb   = time_mlp(sinusoid(t)) + camera_mlp(c2w.flatten())    camera_mlp: 16 -> 1280 -> 1280
    attn1 : self-attention over the 4 views of an object at once,
            (b f) l c -> b (f l) c  (f = 4 views, l = h*w tokens); cross-attention stays per view

Our module is diffusers' ``UNet2DConditionModel`` with the SD-2.1-base config plus
``class_embed_type="projection"`` (its ``class_embedding`` is exactly a Linear-SiLU-Linear MLP
whose output the UNet adds to the time embedding: we feed it the flattened camera), and every
``attn1`` processor replaced by :class:`MultiViewAttnProcessor` (PyTorch SDPA, no xformers;
its ``num_frames`` says how many consecutive batch items form one object). The UNet therefore
saves and loads as an ordinary diffusers folder (``unet/``, camera MLP included); the original
ldm checkpoint goes through the key mapping of :mod:`sds3d.priors.mvdream_convert`.

Everything else is SD-2.1-base's: VAE, OpenCLIP-H text encoder (the penultimate layer, which is
the diffusers ``text_encoder``'s output), scaled-linear DDPM schedule (0.00085..0.012, 1000
steps), epsilon prediction. Renders are resized to 256x256 (32x32 latents).

Camera convention. MVDream's camera is a camera-to-world matrix in OpenGL camera axes (x right,
y up, z back), translation normalized to unit length, flattened row-major, in a z-up world
where azimuth 0 puts the camera on the -y axis and azimuth 90 on +x (its ``camera_utils``:
y-up position (cos el sin az, sin el, cos el cos az), then y/z swapped into Blender axes). Ours
puts azimuth 0 (the front) on +x. ``camera_condition`` therefore rotates our world by -90
degrees about z, (x, y, z) -> (y, -x, z), so our front view is MVDream's front view and the
2D prior's "front view" prompts agree with it (threestudio's MVDream guidance feeds its +x-front
cameras unrotated, so its object front sits at azimuth -90 instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sds3d.cameras import Cameras
from sds3d.priors.loading import SD_MIRROR, hub_offline
from sds3d.priors.mvdream_convert import load_ldm_into, read_ldm_unet_state
from sds3d.priors.stable_diffusion import SD21_UNET, StableDiffusionPrior, assemble_prior
from sds3d.types import SDS3DError

MVDREAM_REPO = "MVDream/MVDream"
MVDREAM_FILE = "sd-v2.1-base-4view.pt"
CAMERA_DIM = 16

# SD-2.1-base's UNet config plus the camera MLP (the class-embedding slot) and 32x32 latents.
MVDREAM_UNET: dict[str, Any] = dict(
    SD21_UNET,
    sample_size=32,
    class_embed_type="projection",
    projection_class_embeddings_input_dim=CAMERA_DIM,
)

# MVDream's world = ours rotated -90 degrees about z: (x, y, z) -> (y, -x, z).
_TO_MVDREAM_WORLD = torch.tensor(
    [[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


class MultiViewAttnProcessor:
    """Self-attention across the ``num_frames`` consecutive batch items of each object (SDPA)."""

    def __init__(self, num_frames: int = 1) -> None:
        self.num_frames = num_frames

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError("MultiViewAttnProcessor is for unmasked self-attention on [B, L, C] tokens only")
        bf, length, channels = hidden_states.shape
        f = self.num_frames
        if bf % f != 0:
            raise ValueError(f"batch {bf} is not a multiple of num_frames={f}")
        x = hidden_states.reshape(bf // f, f * length, channels)  # (b f) l c -> b (f l) c
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        heads = attn.heads
        head_dim = q.shape[-1] // heads
        q, k, v = (y.view(bf // f, -1, heads, head_dim).transpose(1, 2) for y in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        out = out.transpose(1, 2).reshape(bf // f, f * length, heads * head_dim).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out)).reshape(bf, length, -1)  # b (f l) c -> (b f) l c
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def install_multiview_attention(unet: Any) -> None:
    """Replace every self-attention (``attn1``) processor with a :class:`MultiViewAttnProcessor`."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    procs = {name: MultiViewAttnProcessor() if ".attn1." in name else AttnProcessor2_0() for name in unet.attn_processors}
    unet.set_attn_processor(procs)


def set_num_frames(unet: Any, num_frames: int) -> None:
    """Views per object for the multi-view self-attention (1 = a plain per-image UNet)."""
    for proc in unet.attn_processors.values():
        if isinstance(proc, MultiViewAttnProcessor):
            proc.num_frames = num_frames


def build_multiview_unet(config: dict[str, Any] | None = None, meta: bool = False) -> Any:
    """A random-weight multi-view UNet (``MVDREAM_UNET`` unless ``config``); ``meta``: no storage."""
    from diffusers import UNet2DConditionModel

    if meta:
        with torch.device("meta"):
            unet = UNet2DConditionModel(**(config or MVDREAM_UNET))
    else:
        unet = UNet2DConditionModel(**(config or MVDREAM_UNET))
    install_multiview_attention(unet)
    return unet


def camera_condition(cameras: Cameras) -> Tensor:
    """MVDream's camera input [B, 16]: our cameras in its world (see the module docstring)."""
    c2w = cameras.c2w_opengl_normalized()
    return (_TO_MVDREAM_WORLD.to(c2w) @ c2w).reshape(-1, CAMERA_DIM)


# ----------------------------------------------------------------------------- loading


def load_mvdream_unet(
    model: str,
    checkpoint_file: str = MVDREAM_FILE,
    config: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: Path | None = None,
) -> Any:
    """The multi-view UNet from a diffusers folder (``unet/`` or the unet folder itself), an
    ldm checkpoint file (.pt/.ckpt/.safetensors), a folder holding ``checkpoint_file``, or a hub
    repo holding ``checkpoint_file``. ``config`` is the UNet layout of ldm checkpoints."""
    from diffusers import UNet2DConditionModel

    path = Path(model).expanduser()
    if path.is_dir():
        unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
        if (unet_dir / "config.json").is_file():
            unet = UNet2DConditionModel.from_pretrained(unet_dir, local_files_only=True, dtype=dtype)
            if unet.config.class_embed_type != "projection" or unet.config.projection_class_embeddings_input_dim != CAMERA_DIM:
                raise SDS3DError(f"{unet_dir} is a UNet without MVDream's 16-d camera embedding: pass an MVDream checkpoint or converted folder")
            install_multiview_attention(unet)
            return unet
        if not (path / checkpoint_file).is_file():
            raise SDS3DError(f"MVDream folder {path} has neither unet/ (diffusers) nor {checkpoint_file}: pass one of them")
        path = path / checkpoint_file
    elif not path.is_file():
        if model.startswith(("/", ".", "~")) or model.count("/") != 1:
            raise SDS3DError(f"MVDream weights {model} do not exist: pass a hub id such as {MVDREAM_REPO} or a local {MVDREAM_FILE}")
        path = _hub_checkpoint(model, checkpoint_file, cache_dir)
    unet = build_multiview_unet(config, meta=True)
    state = read_ldm_unet_state(path)
    load_ldm_into(unet, {k: v.to(dtype) for k, v in state.items()})
    return unet


def _hub_checkpoint(repo: str, filename: str, cache_dir: Path | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=hub_offline()))
    except Exception as e:  # noqa: BLE001 - offline, missing repo/file, network: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
        raise SDS3DError(
            f"cannot load MVDream weights {repo}/{filename} ({type(e).__name__}: {first}); download them once with network "
            f"access, or pass --mvdream.model /path/to/{MVDREAM_FILE} (or a converted folder with unet/)"
        ) from e


def save_mvdream_diffusers(unet: Any, folder: Path) -> None:
    """Our own format: ``folder/unet/`` (diffusers ``save_pretrained``, camera MLP included)."""
    unet.save_pretrained(Path(folder) / "unet")


@dataclass(frozen=True)
class MVDreamConfig:
    """The MVDream multi-view prior (coupled / mvsds guidance)."""

    model: str = MVDREAM_REPO
    """MVDream weights: a hub repo holding --mvdream.checkpoint-file, a local ldm checkpoint
    (.pt/.ckpt/.safetensors), or a converted diffusers folder with unet/."""
    checkpoint_file: str = MVDREAM_FILE
    """File name of the original ldm checkpoint inside the hub repo or folder."""
    sd_model: str = SD_MIRROR
    """SD-2.x diffusers model (hub id or folder) supplying the VAE, text encoder, tokenizer and
    noise schedule."""
    image_size: int = 256
    """Renders are resized to this size before encoding (256: 32x32 latents)."""

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.image_size % 8 != 0:
            raise SDS3DError(f"--mvdream.image-size {self.image_size} must be a positive multiple of 8 (256 is MVDream's)")


def load_mvdream(
    cfg: MVDreamConfig,
    device: torch.device | str,
    *,
    dtype: torch.dtype | None = None,
    cache_dir: Path | None = None,
    embedding_cache_dir: Path | None = None,
) -> "MVDreamPrior":
    """The MVDream prior on ``device`` (fp16 on CUDA, fp32 elsewhere unless ``dtype``)."""
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = load_mvdream_unet(cfg.model, cfg.checkpoint_file, dtype=dtype, cache_dir=cache_dir)
    sd = assemble_prior(cfg.sd_model, unet, device, dtype, cache_dir, embedding_cache_dir)
    sd.input_size = cfg.image_size
    return MVDreamPrior(sd)


# ----------------------------------------------------------------------------- the prior


class MVDreamPrior:
    """The :class:`sds3d.types.Prior` for MVDream: batches are groups of 4 views of one object.

    VAE, text conditioning (cached [B,77,D] embeddings) and previews are those of the wrapped
    :class:`StableDiffusionPrior` (``sd``), whose UNet is the multi-view UNet."""

    num_views = 4

    def __init__(self, sd: StableDiffusionPrior) -> None:
        self.sd = sd
        self.unet = sd.unet
        self.vae = sd.vae
        self.device = sd.device
        self.dtype = sd.dtype
        self.num_train_timesteps = sd.num_train_timesteps
        self.alphas_cumprod = sd.alphas_cumprod
        self.prediction_type = sd.prediction_type

    def encode_images(self, rgb: Tensor) -> Tensor:
        """[B,H,W,3] in [0,1] -> latents [B,4,32,32] (renders resized to 256), differentiable."""
        return self.sd.encode_images(rgb)

    def decode(self, x: Tensor) -> Tensor:
        return self.sd.decode(x)

    def condition(self, prompts: Sequence[str]) -> Tensor:
        return self.sd.condition(prompts)

    def precompute(self, prompts: list[str]) -> None:
        self.sd.precompute(prompts)

    @torch.no_grad()
    def predict_noise(
        self, x_t: Tensor, t: Tensor, conditions: Sequence[Any], cameras: Cameras | None = None,
        background: Tensor | None = None,
    ) -> Tensor:
        """eps for K conditionings in ONE UNet call over K*B images: [K,B,C,h,w] float32.

        B must be a multiple of 4; items 4i..4i+3 are the views of object i."""
        k, b = len(conditions), x_t.shape[0]
        if b % self.num_views != 0:
            raise SDS3DError(f"the multi-view prior needs batches of 4 views (got {b}): use --batch-size 4, 8, ...")
        if cameras is None or len(cameras) != b:
            raise SDS3DError("the multi-view prior needs one camera per image: pass the rendered cameras")
        for c in conditions:
            if c.shape[0] != b:
                raise ValueError(f"conditioning batch {c.shape[0]} != x_t batch {b}")
        cam = camera_condition(cameras.to(self.device))
        x_in = x_t.to(self.device).repeat(k, 1, 1, 1)
        t_in = t.to(self.device).long().repeat(k)
        set_num_frames(self.unet, self.num_views)
        out = self.sd.unet_forward(x_in, t_in, torch.cat(list(conditions)), class_labels=cam.repeat(k, 1))
        return self.sd.to_epsilon(out, x_in, t_in).view(k, b, *x_t.shape[1:])
