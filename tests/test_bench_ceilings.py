"""Reusing the exemplar benchmark's supervised ceilings: only when nothing they depend on differs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sds3d.bench import exemplar as bench
from sds3d.bench.ceilings import ceiling_key, reused_references
from sds3d.config import RunConfig
from sds3d.types import SDS3DError
from tests.test_bench_rescore import _cfg as small_bench


def _key(run: RunConfig, eval_resolution: int = 128) -> dict:
    return ceiling_key("exemplar", run, 8, eval_resolution, (0.0, 15.0))


def test_the_key_ignores_guidance_and_background_but_not_the_scene_or_scoring() -> None:
    run = RunConfig(prior="exemplar", steps=200)
    same = dataclasses.replace(run, guidance="coupled", white_start=0.15, coupled=dataclasses.replace(run.coupled))
    assert _key(same) == _key(run)
    assert json.loads(json.dumps(_key(run))) == _key(run)  # plain JSON data
    lr = dataclasses.replace(run, gaussians=dataclasses.replace(run.gaussians, lr_means=run.gaussians.lr_means * 2))
    for other in (lr, dataclasses.replace(run, steps=100), dataclasses.replace(run, seed=1), dataclasses.replace(run, scene="nerf")):
        assert _key(other) != _key(run)
    assert _key(run, 64) != _key(run)


def _results(path: Path, key: dict, prompts: list[str]) -> Path:
    refs = [{"prompt": p, "scene": "gaussians", "floor_psnr": 10.0, "ceiling_psnr": 20.0 + i, "ceiling_mask_iou": 0.9,
             "ceiling_janus": -1.0, "ceiling_seconds": 5.0} for i, p in enumerate(prompts)]  # fmt: skip
    path.write_text(json.dumps({"records": [], "references": refs, "ceiling_keys": {"gaussians": key}}))
    return path


def test_reused_references_match_the_key_and_name_what_differs(tmp_path: Path) -> None:
    run = RunConfig(prior="exemplar", steps=200)
    path = _results(tmp_path / "results.json", _key(run), ["a", "b"])
    got = reused_references(path, {"gaussians": _key(run)}, ["b"])
    assert got == {("b", "gaussians"): {"ceiling_psnr": 21.0, "ceiling_mask_iou": 0.9, "ceiling_janus": -1.0, "ceiling_seconds": 5.0}}
    with pytest.raises(SDS3DError, match=r"other settings \(steps\)"):
        reused_references(path, {"gaussians": _key(dataclasses.replace(run, steps=100))}, ["a"])
    with pytest.raises(SDS3DError, match="no gaussians ceiling for 'c'"):
        reused_references(path, {"gaussians": _key(run)}, ["c"])
    with pytest.raises(SDS3DError, match="no nerf ceilings"):
        reused_references(path, {"nerf": _key(dataclasses.replace(run, scene="nerf"))}, ["a"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SDS3DError, match="not a results.json"):
        reused_references(tmp_path / "bad.json", {"gaussians": _key(run)}, ["a"])
    with pytest.raises(SDS3DError, match="not a results.json"):
        reused_references(tmp_path / "missing.json", {"gaussians": _key(run)}, ["a"])


def test_a_second_bench_run_reuses_the_ceilings_without_training_them(tmp_path: Path, monkeypatch) -> None:
    cfg = dataclasses.replace(small_bench(tmp_path), seeds=(0,), eval_resolution=48)
    run = cfg.run
    first = bench.run_bench(cfg)
    assert first["config"]["eval_resolution"] == 48
    [ref] = first["references"]
    assert ref["floor_psnr"] < ref["ceiling_psnr"]

    def untrained(*args, **kwargs):
        raise AssertionError("the ceiling was trained again")

    monkeypatch.setattr(bench, "supervised_ceiling", untrained)
    second = bench.run_bench(dataclasses.replace(cfg, output_dir=tmp_path / "b", references=tmp_path / "a" / "results.json",
                                                 run=dataclasses.replace(run, white_start=0.5)))  # fmt: skip
    assert second["references"] == first["references"]
    [rec] = second["records"]
    span = ref["ceiling_psnr"] - ref["floor_psnr"]
    assert rec["normalized"] == pytest.approx((rec["psnr"] - ref["floor_psnr"]) / span)
    with pytest.raises(SDS3DError, match="eval_resolution"):
        bench.run_bench(dataclasses.replace(cfg, output_dir=tmp_path / "c", references=tmp_path / "a" / "results.json", eval_resolution=32))
