"""Bench summaries (mean, worst decile, per family), contact sheets and --library/--split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sds3d.bench.aggregate import summaries, summary_table, worst_decile
from sds3d.bench.contact_sheet import LABEL_WIDTH, SheetRow, contact_sheet
from sds3d.bench.exemplar import BenchConfig, resolve_library
from sds3d.types import SDS3DError


def _records() -> list[dict]:
    # 12 objects of 3 families; normalized 0.0, 0.1, ..., 1.1; chamfer 0.01 * i
    fams = ["chair"] * 4 + ["mug"] * 4 + ["lamp"] * 4
    return [{"prompt": f"p{i}", "family": f, "guidance": "sds", "scene": "gaussians", "normalized": 0.1 * i,
             "chamfer": 0.01 * i, "psnr": None if i == 0 else 20.0} for i, f in enumerate(fams)]  # fmt: skip


def test_worst_decile_numbers() -> None:
    assert worst_decile([0.5, 0.1, 0.9]) == 0.1  # ceil(3/10) = 1 object
    assert worst_decile([float(i) for i in range(11)]) == pytest.approx(0.5)  # 2 worst of 11: 0, 1
    assert worst_decile([0.3, 0.9, None, float("nan")], lower_is_better=True) == 0.9
    assert worst_decile([None]) is None


def test_summaries_mean_worst_and_families() -> None:
    [s] = summaries(_records())
    n, c = s["columns"]["normalized"], s["columns"]["chamfer"]
    assert s["runs"] == 12
    assert n["mean"] == pytest.approx(0.55) and n["worst_decile"] == pytest.approx(0.05)  # 2 worst: 0.0, 0.1
    assert n["families"] == pytest.approx({"chair": 0.15, "mug": 0.55, "lamp": 0.95})
    assert c["worst_decile"] == pytest.approx(0.105)  # highest Chamfer is worst: 0.11, 0.10
    assert s["columns"]["psnr"]["families"]["chair"] == 20.0  # the None is skipped
    table = summary_table([s])
    assert "| sds | gaussians | worst decile | 0.050 |" in table and "| sds | gaussians | family mug | 0.550 |" in table


def test_contact_sheet_size(tmp_path: Path) -> None:
    truth = torch.zeros(3, 32, 32, 3)
    rows = [SheetRow("a red chair\n[chair] normalized 0.50", truth, torch.ones(3, 32, 32, 3)), SheetRow("b", truth, truth)]
    size = contact_sheet(rows, tmp_path / "s.png", tile=64)  # 32 px images scaled to 64 px tiles
    with Image.open(tmp_path / "s.png") as im:
        assert size == im.size == (LABEL_WIDTH + 6 * 64, 2 * 64)
        assert im.getpixel((LABEL_WIDTH + 10, 10)) == (0, 0, 0) and im.getpixel((LABEL_WIDTH + 3 * 64 + 10, 10)) == (255, 255, 255)


def test_library_and_split_options() -> None:
    assert resolve_library(BenchConfig()) == "exemplar"
    assert resolve_library(BenchConfig(library="procedural", split="test")) == "exemplar:procedural-test"
    for cfg, msg in [(BenchConfig(library="procedural"), "needs --split"), (BenchConfig(split="test"), "needs --library"),
                     (BenchConfig(library="shapenet"), "use 'builtin' or 'procedural'"),
                     (BenchConfig(library="procedural", split="val"), "needs --split"),
                     (BenchConfig(library="procedural", split="train", prior="exemplar:x"), "drop --prior")]:  # fmt: skip
        with pytest.raises(SDS3DError, match=msg):
            resolve_library(cfg)
