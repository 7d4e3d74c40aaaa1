"""MVDream checkpoints: the ldm (original) <-> diffusers key mapping, and loading the weights.

The original checkpoint ``MVDream/MVDream`` / ``sd-v2.1-base-4view.pt`` is an ldm state dict:
``model.diffusion_model.*`` (the multi-view UNet, incl. ``camera_embed.0/2``),
``first_stage_model.*`` (VAE) and ``cond_stage_model.*`` (OpenCLIP). Only the UNet is read;
the VAE and text encoder come from the SD-2.1-base diffusers folder (the same weights).

The mapping is generated from the diffusers UNet config, so it holds for any
``UNet2DConditionModel`` layout (the real SD-2.1-base one and the tiny test ones):

    conv_in                          <-> input_blocks.0.0
    down_blocks.l.resnets.i          <-> input_blocks.(1 + l(L+1) + i).0
    down_blocks.l.attentions.i       <-> input_blocks.(1 + l(L+1) + i).1
    down_blocks.l.downsamplers.0.conv<-> input_blocks.((l+1)(L+1)).0.op
    mid_block.resnets.0 / attentions.0 / resnets.1 <-> middle_block.0 / 1 / 2
    up_blocks.u.resnets.i            <-> output_blocks.(u(L+1) + i).0
    up_blocks.u.attentions.i         <-> output_blocks.(u(L+1) + i).1
    up_blocks.u.upsamplers.0.conv    <-> output_blocks.(u(L+1) + L).(2 if attention else 1).conv
    time_embedding.linear_1/2        <-> time_embed.0/2
    class_embedding.linear_1/2       <-> camera_embed.0/2    (the 16 -> 1280 -> 1280 camera MLP)
    conv_norm_out / conv_out         <-> out.0 / out.2
    resnet norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut
                                     <-> in_layers.0 in_layers.2 emb_layers.1 out_layers.0
                                         out_layers.3 skip_connection

(L = layers_per_block.) Transformer blocks (norm, proj_in, transformer_blocks.k.attn1/attn2/
ff/norm1-3, proj_out) keep their names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sds3d.types import SDS3DError

LDM_UNET_PREFIX = "model.diffusion_model."

_RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def module_map(config: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(diffusers module prefix, ldm module prefix, is_resnet) for a UNet2DConditionModel config."""
    n = len(config["block_out_channels"])
    layers = int(config["layers_per_block"])
    down_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    out: list[tuple[str, str, bool]] = [
        ("conv_in", "input_blocks.0.0", False),
        ("time_embedding.linear_1", "time_embed.0", False),
        ("time_embedding.linear_2", "time_embed.2", False),
        ("class_embedding.linear_1", "camera_embed.0", False),
        ("class_embedding.linear_2", "camera_embed.2", False),
        ("conv_norm_out", "out.0", False),
        ("conv_out", "out.2", False),
        ("mid_block.resnets.0", "middle_block.0", True),
        ("mid_block.attentions.0", "middle_block.1", False),
        ("mid_block.resnets.1", "middle_block.2", True),
    ]
    idx = 1
    for lvl in range(n):
        for i in range(layers):
            out.append((f"down_blocks.{lvl}.resnets.{i}", f"input_blocks.{idx}.0", True))
            if down_attn[lvl]:
                out.append((f"down_blocks.{lvl}.attentions.{i}", f"input_blocks.{idx}.1", False))
            idx += 1
        if lvl != n - 1:
            out.append((f"down_blocks.{lvl}.downsamplers.0.conv", f"input_blocks.{idx}.0.op", False))
            idx += 1
    idx = 0
    for u in range(n):
        for i in range(layers + 1):
            out.append((f"up_blocks.{u}.resnets.{i}", f"output_blocks.{idx}.0", True))
            if up_attn[u]:
                out.append((f"up_blocks.{u}.attentions.{i}", f"output_blocks.{idx}.1", False))
            if i == layers and u != n - 1:
                out.append((f"up_blocks.{u}.upsamplers.0.conv", f"output_blocks.{idx}.{2 if up_attn[u] else 1}.conv", False))
            idx += 1
    return out


def _convert(state: dict[str, Tensor], table: list[tuple[str, str, dict[str, str]]], what: str) -> dict[str, Tensor]:
    """Rename keys by the longest matching module prefix, then its sub-module renames."""
    table = sorted(table, key=lambda row: -len(row[0]))
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        for src, dst, renames in table:
            if key.startswith(src + "."):
                rest = key[len(src) + 1 :]
                for old, new in renames.items():
                    if rest.startswith(old + "."):
                        rest = new + rest[len(old) :]
                        break
                out[f"{dst}.{rest}"] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise SDS3DError(f"{len(unknown)} {what} keys have no counterpart (first: {unknown[0]}); the checkpoint is not an SD-2.x MVDream UNet")
    return out


def diffusers_to_ldm(state: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """Our (diffusers) UNet state dict -> ldm names (without the ``model.diffusion_model.`` prefix)."""
    table = [(d, l, _RESNET_RENAMES if res else {}) for d, l, res in module_map(config)]
    return _convert(state, table, "diffusers")


def ldm_to_diffusers(state: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """ldm UNet state dict (prefix already stripped) -> our (diffusers) names."""
    inverse = {v: k for k, v in _RESNET_RENAMES.items()}
    table = [(l, d, inverse if res else {}) for d, l, res in module_map(config)]
    return _convert(state, table, "ldm")


def read_ldm_unet_state(path: Path) -> dict[str, Tensor]:
    """The UNet part of an ldm checkpoint (.pt/.ckpt pickle or .safetensors), prefix stripped."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            try:  # memory-mapped: only the UNet's tensors are ever read
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError:  # legacy (non-zip) torch.save format cannot be mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt/truncated files all get the one line
        raise SDS3DError(f"cannot read MVDream checkpoint {path} ({type(e).__name__}); re-download sd-v2.1-base-4view.pt") from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    unet = {k[len(LDM_UNET_PREFIX) :]: v for k, v in state.items() if k.startswith(LDM_UNET_PREFIX)}
    if not unet:
        raise SDS3DError(f"{path} has no {LDM_UNET_PREFIX}* keys: pass the original MVDream checkpoint (sd-v2.1-base-4view.pt)")
    return unet


def load_ldm_into(unet: torch.nn.Module, ldm_state: dict[str, Tensor]) -> None:
    """Load an ldm UNet state (prefix stripped) into our diffusers UNet, strictly.

    The tensors are assigned, not copied, so ``unet`` may be built on the meta device."""
    state = ldm_to_diffusers(ldm_state, dict(unet.config))
    own = unet.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise SDS3DError(f"the MVDream checkpoint lacks {len(missing)} UNet weights (first: {missing[0]}); pass the 4-view SD-2.1 checkpoint")
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise SDS3DError(f"MVDream weight {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}; pass the SD-2.1-base 4-view checkpoint")
    unet.load_state_dict(state, strict=True, assign=True)


def save_ldm_checkpoint(unet: torch.nn.Module, path: Path, extra: dict[str, Tensor] | None = None) -> None:
    """Write our UNet in the original ldm layout (``{"state_dict": {model.diffusion_model.*}}``)."""
    state = {LDM_UNET_PREFIX + k: v.detach().cpu().contiguous() for k, v in diffusers_to_ldm(unet.state_dict(), dict(unet.config)).items()}
    state.update(extra or {})
    torch.save({"state_dict": state}, path)
