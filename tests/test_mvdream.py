"""MVDream prior: multi-view attention, ldm key mapping, loading, cameras, the Prior call."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sds3d.cameras import orbit_cameras
from sds3d.priors.mvdream import (
    CAMERA_DIM,
    MVDreamConfig,
    build_multiview_unet,
    camera_condition,
    load_mvdream,
    load_mvdream_unet,
    save_mvdream_diffusers,
    set_num_frames,
)
from sds3d.priors.mvdream_convert import LDM_UNET_PREFIX, diffusers_to_ldm, ldm_to_diffusers, save_ldm_checkpoint
from sds3d.types import Prior, SDS3DError

TINY: dict = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
    use_linear_projection=True,
    class_embed_type="projection",
    projection_class_embeddings_input_dim=CAMERA_DIM,
)


def _randomize(unet: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero everything (diffusers zero-inits some output layers, hiding mapping errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def tiny_unet() -> torch.nn.Module:
    torch.manual_seed(0)
    unet = build_multiview_unet(TINY).eval()
    _randomize(unet)
    return unet


def _inputs(b: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.full((b,), 500)
    ctx = torch.randn(b, 7, 32, generator=g)
    cam = torch.randn(b, CAMERA_DIM, generator=g)
    return x, t, ctx, cam


def _run(unet: torch.nn.Module, x, t, ctx, cam, frames: int) -> torch.Tensor:
    set_num_frames(unet, frames)
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=ctx, class_labels=cam).sample


def test_num_frames_1_zero_camera_equals_plain_unet(tiny_unet: torch.nn.Module) -> None:
    from diffusers import UNet2DConditionModel

    plain_cfg = {k: v for k, v in TINY.items() if k not in ("class_embed_type", "projection_class_embeddings_input_dim")}
    plain = UNet2DConditionModel(**plain_cfg).eval()
    state = {k: v for k, v in tiny_unet.state_dict().items() if not k.startswith("class_embedding.")}
    plain.load_state_dict(state, strict=True)
    mv = build_multiview_unet(TINY).eval()
    mv.load_state_dict(tiny_unet.state_dict())
    with torch.no_grad():  # a zero camera embedding: the camera MLP's last layer outputs 0
        mv.class_embedding.linear_2.weight.zero_()
        mv.class_embedding.linear_2.bias.zero_()
    x, t, ctx, cam = _inputs()
    ours = _run(mv, x, t, ctx, cam, frames=1)
    with torch.no_grad():
        ref = plain(x, t, encoder_hidden_states=ctx).sample
    assert ours.abs().max() > 1e-2
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # The camera matters once its embedding is non-zero.
    assert (_run(tiny_unet, x, t, ctx, cam, 1) - ref).abs().max() > 1e-3


def test_multiview_attention_mixes_views(tiny_unet: torch.nn.Module) -> None:
    x, t, ctx, cam = _inputs(b=8)
    x2 = x.clone()
    x2[1] += 1.0  # view 2 of object 0
    for frames, mixes in ((4, True), (1, False)):
        a, b = _run(tiny_unet, x, t, ctx, cam, frames), _run(tiny_unet, x2, t, ctx, cam, frames)
        view1_change = (a[0] - b[0]).abs().max().item()
        assert (view1_change > 1e-5) == mixes, (frames, view1_change)
        if not mixes:
            assert view1_change < 1e-7
        torch.testing.assert_close(a[4:], b[4:], atol=1e-6, rtol=0)  # object 1 is untouched either way


def test_key_mapping_round_trip(tiny_unet: torch.nn.Module) -> None:
    ours = tiny_unet.state_dict()
    ldm = diffusers_to_ldm(ours, dict(tiny_unet.config))
    back = ldm_to_diffusers(ldm, dict(tiny_unet.config))
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    # The ldm names, written out by hand for this layout (ResBlocks, SpatialTransformer3D, samplers).
    res = ["in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3"]
    modules = {
        "input_blocks.0.0": [""], "input_blocks.1.0": res, "input_blocks.2.0.op": [""], "input_blocks.3.0": res + ["skip_connection"],
        "middle_block.0": res, "middle_block.2": res,
        "output_blocks.0.0": res + ["skip_connection"], "output_blocks.1.0": res + ["skip_connection"], "output_blocks.1.1.conv": [""],
        "output_blocks.2.0": res + ["skip_connection"], "output_blocks.3.0": res + ["skip_connection"],
        "time_embed": ["0", "2"], "camera_embed": ["0", "2"], "out": ["0", "2"],
    }  # fmt: skip
    expected = {f"{m}.{s}.{p}".replace("..", ".") for m, subs in modules.items() for s in subs for p in ("weight", "bias")}
    for blk in ("input_blocks.1.1", "middle_block.1", "output_blocks.2.1", "output_blocks.3.1"):
        expected |= {f"{blk}.{n}.{p}" for n in ("norm", "proj_in", "proj_out") for p in ("weight", "bias")}
        tb = f"{blk}.transformer_blocks.0"
        expected |= {f"{tb}.{a}.{w}.weight" for a in ("attn1", "attn2") for w in ("to_q", "to_k", "to_v", "to_out.0")}
        expected |= {f"{tb}.{n}.{p}" for n in ("attn1.to_out.0", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "norm1", "norm2", "norm3") for p in ("weight", "bias")}
    assert set(ldm) == expected
    assert torch.equal(ldm["input_blocks.1.0.in_layers.2.weight"], ours["down_blocks.0.resnets.0.conv1.weight"])
    assert torch.equal(ldm["output_blocks.1.1.conv.weight"], ours["up_blocks.0.upsamplers.0.conv.weight"])
    assert torch.equal(ldm["camera_embed.2.bias"], ours["class_embedding.linear_2.bias"])


def test_loads_original_ldm_checkpoint(tmp_path: Path, tiny_unet: torch.nn.Module) -> None:
    """A random checkpoint in the ORIGINAL layout (with VAE/CLIP keys) loads and gives the same outputs."""
    ref = build_multiview_unet(TINY).eval()
    _randomize(ref, seed=7)
    path = tmp_path / "sd-v2.1-base-4view.pt"
    extra = {"first_stage_model.encoder.conv_in.weight": torch.randn(8, 3, 3, 3), "cond_stage_model.model.ln_final.weight": torch.ones(32)}
    save_ldm_checkpoint(ref, path, extra)
    raw = torch.load(path, weights_only=True)["state_dict"]
    assert LDM_UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in raw
    assert LDM_UNET_PREFIX + "camera_embed.0.weight" in raw
    for source in (path, tmp_path):  # the file, or a folder holding it
        loaded = load_mvdream_unet(str(source), config=TINY).eval()
        x, t, ctx, cam = _inputs(b=8)
        torch.testing.assert_close(_run(loaded, x, t, ctx, cam, 4), _run(ref, x, t, ctx, cam, 4), atol=0, rtol=0)
    legacy = tmp_path / "legacy" / "model.ckpt"  # the pre-zip torch.save format (cannot be memory-mapped)
    legacy.parent.mkdir()
    torch.save({"state_dict": raw}, legacy, _use_new_zipfile_serialization=False)
    loaded = load_mvdream_unet(str(legacy), config=TINY).eval()
    torch.testing.assert_close(_run(loaded, x, t, ctx, cam, 4), _run(ref, x, t, ctx, cam, 4), atol=0, rtol=0)
    # The diffusers-format folder (our save format) round-trips too.
    save_mvdream_diffusers(loaded, tmp_path / "converted")
    again = load_mvdream_unet(str(tmp_path / "converted")).eval()
    torch.testing.assert_close(_run(again, x, t, ctx, cam, 4), _run(ref, x, t, ctx, cam, 4), atol=0, rtol=0)


def test_bad_checkpoints_give_one_line_errors(tmp_path: Path) -> None:
    torch.save({"state_dict": {"first_stage_model.x": torch.zeros(1)}}, tmp_path / "vae_only.pt")
    with pytest.raises(SDS3DError, match="model.diffusion_model"):
        load_mvdream_unet(str(tmp_path / "vae_only.pt"), config=TINY)
    with pytest.raises(SDS3DError, match="neither unet/"):
        load_mvdream_unet(str(tmp_path))
    with pytest.raises(SDS3DError, match="do not exist"):
        load_mvdream_unet(str(tmp_path / "nope.pt"))


def test_missing_hub_weights_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SDS3DError) as e:
        load_mvdream_unet("someone/not-a-real-mvdream-repo", cache_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "someone/not-a-real-mvdream-repo" in msg and "--mvdream.model /path/to" in msg


def test_camera_condition_matches_mvdream_convention() -> None:
    """Hand-derived MVDream matrices (camera_utils + Blender axes) for our az 0 and az 90, el 0."""
    cams = orbit_cameras([0.0, 0.0], [0.0, 90.0], 3.0, 40.0, 32, 32)
    got = camera_condition(cams).view(2, 4, 4)
    # az 0: camera on MVDream's -y axis; columns right, up, back (OpenGL), position.
    front = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, -1], [0, 1, 0, 0], [0, 0, 0, 1]])
    # az 90: camera on +x; right = +y, up = +z, back = +x.
    side = torch.tensor([[0.0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    torch.testing.assert_close(got[0], front, atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], side, atol=1e-5, rtol=0)


def test_prior_through_load_mvdream(tmp_path: Path, tiny_sd_dir: Path, tiny_unet: torch.nn.Module) -> None:
    save_mvdream_diffusers(tiny_unet, tmp_path / "mv")
    prior = load_mvdream(MVDreamConfig(model=str(tmp_path / "mv"), sd_model=str(tiny_sd_dir), image_size=16), "cpu")
    assert isinstance(prior, Prior) and prior.num_views == 4
    cams = orbit_cameras(20.0, [30.0, 120.0, 210.0, 300.0], 3.0, 40.0, 64, 64)
    x = prior.encode_images(torch.rand(4, 64, 64, 3))
    assert x.shape == (4, 4, 8, 8)
    cond, unc = prior.condition(["a corgi"] * 4), prior.condition([""] * 4)
    t = torch.full((4,), 300)
    eps = prior.predict_noise(x, t, [cond, unc], cams)
    assert eps.shape == (2, 4, 4, 8, 8)
    set_num_frames(prior.unet, 4)
    with torch.no_grad():
        manual = prior.unet(x, t, encoder_hidden_states=unc, class_labels=camera_condition(cams)).sample
    torch.testing.assert_close(eps[1], manual, atol=1e-5, rtol=0)
    assert (eps[0] - eps[1]).abs().max() > 1e-4
    with pytest.raises(SDS3DError, match="batches of 4"):
        prior.predict_noise(x[:3], t[:3], [cond[:3]], cams[:3])
    with pytest.raises(SDS3DError, match="camera"):
        prior.predict_noise(x, t, [cond])

