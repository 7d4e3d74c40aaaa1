import dataclasses
import json
from pathlib import Path

import pytest
import torch

from sds3d.config import DiffusersOptions, RunConfig, resolve_device, save_config
from sds3d.recipes import load_config
from sds3d.types import SDS3DError


def test_config_round_trips_through_json(tmp_path):
    cfg = RunConfig(
        guidance="nfsd", scene="nerf", steps=7, resolution=(64, 128), resolution_milestones=(3,),
        diffusers=DiffusersOptions(cache_dir=Path("/x"), dtype="bf16"),
    )
    cfg = dataclasses.replace(cfg, sds=dataclasses.replace(cfg.sds, guidance_scale=12.5))
    save_config(cfg, "a corgi", tmp_path / "config.json")
    prompt, again = load_config(tmp_path / "config.json")
    assert prompt == "a corgi" and again == cfg


def test_an_older_exemplar_run_folder_resumes_on_white(tmp_path):
    """Run folders written before --white-start say background "auto", which then meant white for
    exemplar priors: a resume keeps training them on white."""
    save_config(RunConfig(prior="exemplar", background="auto"), "a snowman", tmp_path / "config.json")
    data = json.loads((tmp_path / "config.json").read_text())
    del data["config"]["white_start"], data["config"]["random_background_p"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert load_config(tmp_path / "old.json")[1].background == "white"
    assert load_config(tmp_path / "config.json")[1].background == "auto"  # a current folder: as written
    data["config"]["prior"] = "stabilityai/stable-diffusion-2-1-base"
    (tmp_path / "sd.json").write_text(json.dumps(data))
    assert load_config(tmp_path / "sd.json")[1].background == "auto"  # random, as before


def test_resolution_schedule_and_defaults():
    cfg = RunConfig(resolution=(64, 128, 256), resolution_milestones=(10, 20), steps=30)
    assert [cfg.resolution_at(s) for s in (0, 9, 10, 19, 20, 29)] == [64, 64, 128, 128, 256, 256]
    assert RunConfig(prior="exemplar").resolutions() == ((64,), ())
    assert RunConfig(scene="nerf", steps=100).resolutions() == ((64, 256), (50,))
    assert RunConfig().resolutions() == ((512,), ())
    with pytest.raises(SDS3DError, match="milestones"):
        RunConfig(resolution=(64, 128)).validate()


def test_multi_view_guidance_needs_groups_of_four():
    assert RunConfig(guidance="coupled").num_views == 4 and RunConfig().num_views == 1
    with pytest.raises(SDS3DError, match="multiple of 4"):
        RunConfig(guidance="mvsds", batch_size=6).validate()


def test_a_cuda_index_past_the_visible_gpus_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(SDS3DError, match=r"--device cuda:7: this machine has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:7")
