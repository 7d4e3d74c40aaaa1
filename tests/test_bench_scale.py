"""``sds3d bench scale`` at the tiny architecture: one real generate subprocess per row, the
table's numbers read back, and a failing row reported as its one-line error."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest

from sds3d.bench.scale import ScaleConfig, _rows, error_line, format_table, row_command, run_scale_bench


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scale-cache")


def test_rows_most_informative_first() -> None:
    rows = _rows(ScaleConfig())
    assert rows[:3] == [("sds", "gaussians"), ("vsd", "gaussians"), ("coupled", "gaussians")]
    assert len(rows) == 12 and len(set(rows)) == 12
    assert _rows(ScaleConfig(guidance=("csd", "sds"), scene=("nerf",))) == [("csd", "nerf"), ("sds", "nerf")]


def test_row_command_is_a_user_generate() -> None:
    cmd = row_command(ScaleConfig(memory_limit_gib=20.0, extra="--export.resolution 64"), "coupled", "nerf", Path("/m/sd"), Path("/m/mv"))
    assert cmd[1:5] == ["-m", "sds3d.cli", "generate", "a DSLR photo of a corgi"]
    joined = " ".join(cmd)
    assert "--guidance coupled" in joined and "--scene nerf" in joined and "--batch-size 4" in joined
    assert "--prior /m/sd --mvdream.model /m/mv --mvdream.sd-model /m/sd" in joined
    assert "--steps 2" in joined and "--memory-limit-gib 20.0" in joined and cmd[-2:] == ["--export.resolution", "64"]
    assert "--batch-size 1" in " ".join(row_command(ScaleConfig(), "vsd", "gaussians", Path("a"), Path("b")))


def test_error_line() -> None:
    log = "Loading\nTraceback (most recent call last):\n  File x\nRuntimeError: shapes [1,4] and [2,4]\n"
    assert error_line(log, 1, False, 60) == "RuntimeError: shapes [1,4] and [2,4]"
    assert error_line("junk\nsds3d: error: --guidance vsd needs ~9 GiB\nmore\n", 1, False, 60) == "--guidance vsd needs ~9 GiB"
    assert "SIGKILL" in error_line("", -signal.SIGKILL, False, 60)
    assert error_line("x", -9, True, 60) == "killed after the 60 s row timeout"


def test_tiny_table(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = ScaleConfig(guidance=("sds",), scene=("gaussians",), arch="tiny", out_dir=tmp_path / "ok", cache_dir=cache,
                      resolution=64, turntable_frames=2, extra="--export.resolution 32 --export.refine-steps 0")
    (row,) = run_scale_bench(cfg)
    assert row["status"] == "ok", row
    for key in ("step_seconds", "load_seconds", "export_seconds", "peak_rss_gib"):
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
    assert 0.2 < row["peak_rss_gib"] < 8  # torch + diffusers + the tiny models: about 1 GiB
    assert row["step_seconds"] < row["wall_seconds"]
    saved = json.loads((tmp_path / "ok" / "scale.json").read_text())
    assert saved["rows"][0]["status"] == "ok" and saved["params"]["unet"] > 0
    out = capsys.readouterr().out
    assert "| sds | gaussians | 1 |" in out and "| ok |" in out


def test_bad_row_gives_its_error_and_the_table_goes_on(cache: Path, tmp_path: Path) -> None:
    # a memory limit no run fits: every row stops at the guard, before its models load
    cfg = ScaleConfig(guidance=("sds", "mvsds"), scene=("gaussians",), arch="tiny", out_dir=tmp_path, cache_dir=cache,
                      resolution=64, memory_limit_gib=1e-6)
    rows = run_scale_bench(cfg)
    assert [r["guidance"] for r in rows] == ["sds", "mvsds"]
    for r in rows:
        assert r["returncode"] == 1 and "step_seconds" not in r
        assert r["status"].startswith(f"--guidance {r['guidance']} at fp32 on cpu needs ~") and "available" in r["status"]
        assert "\n" not in r["status"]
    table = format_table(rows, cuda=False)
    assert table.count("\n") == 3 and "| — |" in table
