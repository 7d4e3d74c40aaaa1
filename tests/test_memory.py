"""The memory guard (sds3d.memory): parameter counts from model files, the estimate's numbers,
and the one-line refusal before any model loads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sds3d.config import RunConfig
from sds3d.memory import (
    ACT_2D_BYTES_512,
    ACT_MV_BYTES_256,
    BASE_BYTES,
    GIB,
    MVDREAM_UNET_PARAMS,
    SD21_PARAMS,
    VSD_UNET_FACTOR,
    available_bytes,
    check_memory,
    estimate,
    folder_params,
    safetensors_params,
)
from sds3d.priors.exemplar import LIBRARY_BYTES_PER_PIXEL, LIBRARY_LOAD_BYTES, library_size
from sds3d.recipes import exemplar_recipe
from sds3d.types import SDS3DError

SD21_TOTAL = sum(SD21_PARAMS.values())
NOT_CACHED = "nobody/not-a-cached-model"  # a hub id absent from the cache: the published counts


def cfg_for(**kw) -> RunConfig:
    mv = dataclasses.replace(RunConfig().mvdream, model=NOT_CACHED, sd_model=NOT_CACHED)
    return dataclasses.replace(RunConfig(), prior=NOT_CACHED, mvdream=mv, **kw)


def test_safetensors_params_counts_the_header(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.float16)}, str(tmp_path / "m.safetensors"))
    assert safetensors_params(tmp_path / "m.safetensors") == 17
    assert folder_params(tmp_path) == 17
    assert folder_params(tmp_path / "nothing") is None


def test_folder_counts_match_the_tiny_pipeline(tiny_sd_dir: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet")
    assert folder_params(tiny_sd_dir / "unet") == sum(p.numel() for p in unet.parameters())


def test_sds_estimate_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    est = estimate(cfg_for(guidance="sds", batch_size=1, resolution=(512,)), "cpu")
    assert est is not None and est.dtype == "fp32"
    assert est.weights == SD21_TOTAL * 4  # 5.16e9 bytes
    assert est.activations == int(ACT_2D_BYTES_512)
    assert est.total == SD21_TOTAL * 4 + int(ACT_2D_BYTES_512) + int(BASE_BYTES)
    # batch 4 at 256 px: 4 images of a quarter of the pixels = the same activations
    assert estimate(cfg_for(guidance="sds", batch_size=4, resolution=(256,)), "cpu").activations == int(ACT_2D_BYTES_512)
    # fp16 on CUDA (auto): half the bytes
    half = estimate(cfg_for(guidance="sds", batch_size=1, resolution=(512,)), "cuda")
    assert half.dtype == "fp16" and half.weights == SD21_TOTAL * 2


def test_vsd_and_coupled_estimates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sds = estimate(cfg_for(guidance="sds", batch_size=1, resolution=(512,)), "cpu")
    vsd = estimate(cfg_for(guidance="vsd", batch_size=1, resolution=(512,)), "cpu")
    assert vsd.total - sds.total == int(VSD_UNET_FACTOR * SD21_PARAMS["unet"] * 4)
    coupled = estimate(cfg_for(guidance="coupled", batch_size=4, resolution=(512,)), "cpu")
    mv_weights = (MVDREAM_UNET_PARAMS + SD21_PARAMS["vae"] + SD21_PARAMS["text_encoder"]) * 4
    assert coupled.weights == SD21_TOTAL * 4 + mv_weights
    # one 2D image (view 0 of the one group) + 4 MVDream views at 256
    assert coupled.activations == int(ACT_2D_BYTES_512) + int(ACT_MV_BYTES_256 * 4)
    mvsds = estimate(cfg_for(guidance="mvsds", batch_size=4, resolution=(512,)), "cpu")
    assert mvsds.weights == mv_weights


def test_exemplar_runs_count_their_library(tmp_path: Path) -> None:
    """Each exemplar prior a run loads counts objects x 4 num_groups x resolution^2 pixels at
    LIBRARY_BYTES_PER_PIXEL, plus the load's fixed part; coupled loads two copies."""
    sds = exemplar_recipe()
    per_pixel = 7 * 4 * 96 * 64**2 * LIBRARY_BYTES_PER_PIXEL  # the 7 built-in objects at 64 px
    est = estimate(sds, "cpu")
    assert est is not None and est.weights == est.activations == 0 and est.base == int(BASE_BYTES)
    assert est.library == per_pixel + LIBRARY_LOAD_BYTES
    coupled = estimate(dataclasses.replace(sds, guidance="coupled"), "cpu")
    assert coupled is not None and coupled.library == 2 * est.library
    mvsds = estimate(dataclasses.replace(sds, guidance="mvsds"), "cpu")
    assert mvsds is not None and mvsds.library == est.library
    fine = dataclasses.replace(sds, exemplar=dataclasses.replace(sds.exemplar, resolution=128))
    assert estimate(fine, "cpu").library == 4 * per_pixel + LIBRARY_LOAD_BYTES
    # the procedural splits and a folder of meshes are counted without building a mesh
    assert library_size("exemplar:procedural-test") == 28
    for name in ("a.glb", "b.OBJ", "c.ply", "notes.txt", "prompts.json"):
        (tmp_path / name).write_text("")
    assert library_size(f"exemplar:{tmp_path}") == 3
    # too little memory: one line that names the library's options, no diffusers hints
    with pytest.raises(SDS3DError) as e:
        check_memory(dataclasses.replace(sds, memory_limit_gib=1.0), torch.device("cpu"))
    msg = str(e.value)
    assert "\n" not in msg and f"exemplar library {est.library / GIB:.1f}" in msg and "1.0 GiB memory available" in msg
    assert "--exemplar.resolution" in msg and "--exemplar.num-groups" in msg and "--diffusers.dtype" not in msg
    assert check_memory(dataclasses.replace(sds, memory_limit_gib=0.0), torch.device("cpu")) is None


def test_check_memory_refuses_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = cfg_for(guidance="coupled", batch_size=4, resolution=(512,))
    need = estimate(cfg, "cpu").total
    assert check_memory(cfg, torch.device("cpu"), available=need + 1).total == need
    with pytest.raises(SDS3DError) as e:
        check_memory(cfg, torch.device("cpu"), available=8 * GIB)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"--guidance coupled at fp32 on cpu needs ~{need / GIB:.1f} GiB" in msg
    assert "8.0 GiB memory available" in msg
    assert "--device cuda" in msg and "--diffusers.dtype bf16" in msg and "--resolution" in msg
    # --memory-limit-gib is what it compares with; 0 turns the check off
    with pytest.raises(SDS3DError, match="2.0 GiB memory available"):
        check_memory(dataclasses.replace(cfg, memory_limit_gib=2.0), torch.device("cpu"))
    assert check_memory(dataclasses.replace(cfg, memory_limit_gib=0), torch.device("cpu"), available=1) is None


def test_available_bytes_reads_meminfo() -> None:
    avail = available_bytes(torch.device("cpu"))
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        pytest.skip("no /proc/meminfo")
    kb = next(int(line.split()[1]) for line in meminfo.read_text().splitlines() if line.startswith("MemAvailable:"))
    assert avail is not None and 0 < avail <= kb * 1024 * 1.2


def test_generate_fails_before_loading(tiny_sd_dir: Path, tmp_path: Path) -> None:
    from sds3d.train import generate

    cfg = dataclasses.replace(RunConfig(), prior=str(tiny_sd_dir), steps=1, batch_size=1, device="cpu",
                              output_dir=tmp_path, memory_limit_gib=1e-6)
    with pytest.raises(SDS3DError, match="needs ~.* GiB"):
        generate("a corgi", cfg, progress=False)
    assert not list(tmp_path.glob("*/checkpoint.pt"))


def test_batch_prior_cache_checks_before_its_first_load(tiny_sd_dir: Path) -> None:
    from sds3d.batch.lines import BatchEntry
    from sds3d.batch.runner import PriorCache

    cfg = dataclasses.replace(RunConfig(), prior=str(tiny_sd_dir), batch_size=1, device="cpu", memory_limit_gib=1e-6)
    cache = PriorCache([BatchEntry(0, "a corgi", (), cfg)])
    with pytest.raises(SDS3DError, match="needs ~"):
        cache.get(cache.entries[0], torch.device("cpu"))
    assert not cache.loaded
    ok = BatchEntry(0, "a corgi", (), dataclasses.replace(cfg, memory_limit_gib=None))
    prior_2d, prior_mv = PriorCache([ok]).get(ok, torch.device("cpu"))
    assert prior_2d is not None and prior_mv is None
