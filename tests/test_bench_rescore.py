"""Scoring finished benchmark runs again from their run folders, without training."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sds3d.bench import exemplar as bench
from sds3d.bench.rescore import load_rescore
from sds3d.config import RunConfig
from sds3d.export import ExportConfig
from sds3d.priors.exemplar import ExemplarConfig
from sds3d.scenes.gaussians import GaussiansConfig
from sds3d.types import SDS3DError
from tests.test_bench import _library

SCORES = ("psnr", "mask_iou", "janus", "normalized", "chamfer", "mesh_psnr_object", "mesh_iou", "mesh_pieces")


def _cfg(tmp_path: Path) -> bench.BenchConfig:
    _library(tmp_path / "lib")
    run = RunConfig(
        resolution=(16,), preview_every=0, checkpoint_every=0, log_every=5, turntable_frames=2, turntable_resolution=16,
        gaussians=GaussiansConfig(num_init=256, init_opacity=0.3, init_scale=0.08),
        exemplar=ExemplarConfig(resolution=16, num_groups=2, cache_dir=tmp_path / "cache"),
        export=ExportConfig(resolution=16, turntable=False, eval_views=2, eval_resolution=16, splat_ply=False),
    )  # fmt: skip
    return bench.BenchConfig(prior=f"exemplar:{tmp_path / 'lib'}", steps=3, device="cpu", output_dir=tmp_path / "a",
                             eval_views=2, eval_resolution=24, sheet_resolution=0, seeds=(0, 1), run=run)  # fmt: skip


def test_a_rescore_at_the_same_settings_gives_the_same_numbers_and_a_new_size_new_ones(tmp_path: Path, monkeypatch) -> None:
    cfg = _cfg(tmp_path)
    first = bench.run_bench(cfg)
    old = tmp_path / "a" / "results.json"
    with monkeypatch.context() as m:
        m.setattr("sds3d.train.generate", lambda *a, **k: pytest.fail("a rescore trained a run"))
        m.setattr(bench, "supervised_ceiling", lambda *a, **k: pytest.fail("the ceiling was trained again"))
        # other options on the command line do not matter: the runs' own settings are used
        same = bench.run_bench(dataclasses.replace(cfg, output_dir=tmp_path / "b", rescore=old, references=old, seeds=(5,), steps=50))
    assert [r["seed"] for r in same["records"]] == [0, 1] and same["config"]["steps"] == 3
    for a, b in zip(first["records"], same["records"], strict=True):
        assert (a["prompt"], a["seed"], a["run_dir"]) == (b["prompt"], b["seed"], b["run_dir"])
        for k in SCORES:
            assert b[k] == pytest.approx(a[k], abs=1e-5), k
    assert same["references"] == first["references"]

    finer = bench.run_bench(dataclasses.replace(cfg, output_dir=tmp_path / "c", rescore=old, eval_resolution=40))
    assert finer["config"]["eval_resolution"] == 40 and len(finer["records"]) == 2
    assert all(r["psnr"] != a["psnr"] for r, a in zip(finer["records"], first["records"], strict=True))
    assert finer["references"][0]["ceiling_psnr"] > finer["references"][0]["floor_psnr"]


def test_a_bad_rescore_file_or_a_lost_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"config": {}, "records": [{"prompt": "x"}]}))
    with pytest.raises(SDS3DError, match="not a results.json"):
        load_rescore(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text(json.dumps({"config": {}, "records": []}))
    with pytest.raises(SDS3DError, match="no runs"):
        load_rescore(tmp_path / "empty.json")
    cfg = dataclasses.replace(_cfg(tmp_path), seeds=(0,))
    bench.run_bench(cfg)
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    (Path(saved["records"][0]["run_dir"]) / "checkpoint.pt").unlink()
    with pytest.raises(SDS3DError, match="lost its scene"):
        bench.run_bench(dataclasses.replace(cfg, output_dir=tmp_path / "b", rescore=tmp_path / "a" / "results.json"))
