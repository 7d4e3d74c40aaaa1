"""The exemplar benchmark end to end on one small object."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import trimesh

from sds3d.bench.exemplar import BenchConfig, _averages, markdown_table, run_bench
from sds3d.config import RunConfig
from sds3d.export import ExportConfig
from sds3d.priors.exemplar import ExemplarConfig
from sds3d.scenes.gaussians import GaussiansConfig


def _library(folder: Path) -> None:
    body = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    body.visual.vertex_colors = np.tile([40, 90, 200, 255], (len(body.vertices), 1)).astype(np.uint8)
    nose = trimesh.creation.icosphere(1, radius=0.3)
    nose.visual.vertex_colors = np.tile([240, 120, 20, 255], (len(nose.vertices), 1)).astype(np.uint8)
    nose.apply_translation([0, 0, 0.6])  # glTF front
    folder.mkdir()
    (folder / "blue_box.glb").write_bytes(trimesh.util.concatenate([body, nose]).export(file_type="glb"))


@pytest.mark.slow  # ~30 s on 2 idle cores (about 75 s while the machine is busy)
def test_bench_one_object(tmp_path: Path) -> None:
    _library(tmp_path / "lib")
    run = RunConfig(
        resolution=(32,),
        preview_every=0,
        checkpoint_every=0,
        log_every=5,
        turntable_frames=2,
        turntable_resolution=32,
        gaussians=GaussiansConfig(num_init=1024, init_opacity=0.3, init_scale=0.05),
        exemplar=ExemplarConfig(resolution=32, num_groups=6, cache_dir=tmp_path / "cache"),
        export=ExportConfig(resolution=32, turntable=False, eval_views=2, eval_resolution=32, splat_ply=False),
    )
    cfg = BenchConfig(
        prior=f"exemplar:{tmp_path / 'lib'}", steps=8, device="cpu", output_dir=tmp_path / "out", eval_views=4, run=run
    )
    result = run_bench(cfg)
    [rec] = result["records"]
    assert rec["prompt"] == "blue box" and rec["guidance"] == "sds" and rec["scene"] == "gaussians"
    for key in ("psnr", "mask_iou", "janus", "normalized", "seconds"):
        assert math.isfinite(rec[key]), key
    assert rec["chamfer"] is None or 0 <= rec["chamfer"] < 1
    assert rec["mesh_psnr"] is None or rec["mesh_psnr"] > 0  # None only when no mesh was extracted
    assert rec["mesh_iou"] is None or 0 <= rec["mesh_iou"] <= 1
    assert rec["mesh_psnr_object"] is None or rec["mesh_psnr_object"] <= rec["mesh_psnr"]  # white background inflates
    assert rec["mesh_pieces"] is None or rec["mesh_pieces"] >= 1
    assert rec["mesh_euler"] is None or rec["mesh_euler"] <= 2 * rec["mesh_pieces"]
    [ref] = result["references"]
    assert ref["floor_psnr"] < ref["ceiling_psnr"]
    assert 0 <= rec["mask_iou"] <= 1
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["records"][0]["psnr"] == rec["psnr"] and saved["averages"][0]["runs"] == 1
    assert "| blue box | sds | gaussians |" in (tmp_path / "out" / "results.md").read_text()
    assert saved["summary"][0]["columns"]["psnr"]["mean"] == rec["psnr"] == saved["summary"][0]["columns"]["psnr"]["worst_decile"]
    from PIL import Image

    from sds3d.bench.contact_sheet import LABEL_WIDTH

    with Image.open(tmp_path / "out" / "contact-sds-gaussians-seed0.png") as im:
        assert im.size == (LABEL_WIDTH + 6 * 128, 128)  # truth and result from 3 views, 1 object


def test_averages_and_table() -> None:
    rec = dict(guidance="sds", scene="gaussians", seed=0, mask_iou=0.5, janus=1.0, seconds=10.0)
    mesh_a = {"mesh_psnr_object": 20.0, "mesh_psnr": 26.0, "mesh_iou": 0.9, "mesh_pieces": 1, "mesh_euler": 2}
    mesh_b = {"mesh_psnr_object": 23.0, "mesh_psnr": 28.0, "mesh_iou": None, "mesh_pieces": 2, "mesh_euler": 0}
    records = [
        {**rec, "prompt": "a", "psnr": 20.0, "chamfer": 0.02, "normalized": 0.5, **mesh_a},
        {**rec, "prompt": "b", "psnr": 22.0, "chamfer": None, "normalized": 0.7, **mesh_b},
    ]
    [avg] = _averages(records)
    assert avg["runs"] == 2 and avg["psnr"] == 21.0 and avg["chamfer"] == 0.02
    assert abs(avg["normalized"] - 0.6) < 1e-12
    assert avg["mesh_psnr"] == 27.0 and avg["mesh_iou"] == 0.9 and avg["mesh_psnr_object"] == 21.5
    assert avg["mesh_pieces"] == 1.5 and avg["mesh_euler"] == 1.0
    refs = [{"prompt": p, "scene": "gaussians", "floor_psnr": 10.0, "ceiling_psnr": 30.0} for p in "ab"]
    table = markdown_table({"records": records, "references": refs, "averages": [avg]})
    assert "| b | sds | gaussians | 0 | 22.00 | 10.00 | 30.00 | 0.70 | 0.50 | 1.00 | - | 23.00 | 28.00 | - | 2 | 0 | 10 |" in table
    assert "| **average** | sds | gaussians | 2 runs | 21.00 |" in table


def test_each_scene_runs_its_own_recipe_and_typed_options_apply_to_all() -> None:
    """``sds3d bench exemplar --scene gaussians nerf``: each scene starts from its exemplar recipe
    (the bench's run settings on top); a --run.* option set on the command line applies to every
    scene, also where it equals the Gaussian recipe's value."""
    from sds3d.bench.exemplar import _run_config, bench_run
    from sds3d.cli import parse_command
    from sds3d.recipes import exemplar_recipe

    def runs(*args: str) -> dict[str, RunConfig]:
        cmd, typed = parse_command(["bench", "exemplar", "--scene", "gaussians", "nerf", *args])
        return {s: _run_config(cmd, typed, "sds", s, 1) for s in ("gaussians", "nerf")}

    plain = runs()
    for scene, run in plain.items():
        recipe = exemplar_recipe(scene=scene)  # type: ignore[arg-type]
        assert (run.white_start, run.sds.timesteps, run.coupled.timesteps) == (recipe.white_start, recipe.sds.timesteps, recipe.coupled.timesteps)
        assert run.scene == scene and run.seed == 1 and run.steps == 200 and run.preview_every == 0 and not run.export.turntable
    assert plain["gaussians"].white_start == 0.0 and plain["nerf"].white_start == 0.5
    typed = runs("--run.white-start", "0", "--run.sds.guidance-scale", "2")
    assert typed["nerf"].white_start == 0.0 and typed["nerf"].sds.guidance_scale == typed["gaussians"].sds.guidance_scale == 2.0
    assert typed["nerf"].sds.timesteps.anneal == "none"  # untyped: still the NeRF recipe's
    assert bench_run("nerf").nerf == exemplar_recipe(scene="nerf").nerf
