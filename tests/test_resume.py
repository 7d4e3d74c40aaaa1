"""Kill-and-resume equality, NaN handling and bad inputs of runs, on the CPU with the exemplar prior.

A run stopped by SIGTERM and resumed from its checkpoint must end bit-identical (torch.equal)
to an uninterrupted run of the same seed: scene parameters, optimizer moments, densification
state and RNG streams.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sds3d.train as train
from conftest import assert_phases, EXEMPLAR_CLI_FAST
from sds3d.cli import main
from sds3d.types import GuidanceOutput

ROOT = Path(__file__).parents[1]
FAST = [*EXEMPLAR_CLI_FAST, "--log-every", "1"]


def assert_same_tree(a, b, where="checkpoint"):
    """Recursive bit-identity of two checkpoint trees (tensors with torch.equal)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    elif hasattr(a, "dtype") and hasattr(a, "shape"):  # numpy RNG state
        assert (a == b).all(), where
    else:
        assert a == b, where


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def error_lines(capsys) -> list[str]:
    """stderr lines other than the progress bar's."""
    return [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("sds3d: ")
            or line.startswith("sds3d: error")]


def only_run(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def sigterm_at_step(monkeypatch, k: int) -> None:
    """Deliver SIGTERM to this process while step ``k`` renders (the loop stops before k+1)."""
    calls = {"n": 0}
    real = train.sample_cameras

    def sample(*args, **kwargs):
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGTERM)
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "sample_cameras", sample)


DENSIFY = ["--gaussians.num-init", "128", "--gaussians.refine-start", "1", "--gaussians.refine-every", "2",
           "--gaussians.grow-grad2d", "1e-9", "--gaussians.max-gaussians", "400"]


@pytest.mark.parametrize(
    "extra", [DENSIFY, ["--guidance", "vsd"]], ids=["sds-densify", "vsd"]
)
def test_generate_sigterm_then_resume_is_bit_identical(tmp_path, monkeypatch, capsys, extra):
    """Densification (strategy state, grown optimizer moments) and VSD's trained denoiser survive a resume."""
    args = ["generate", "a snowman", *FAST, *extra, "--steps", "6", "--checkpoint-every", "2"]
    assert main([*args, "--output-dir", str(tmp_path / "ref")]) == 0
    ref = only_run(tmp_path / "ref")

    with monkeypatch.context() as m:
        sigterm_at_step(m, 2)
        assert main([*args, "--output-dir", str(tmp_path / "cut")]) == 130
    err = capsys.readouterr().err
    assert "--resume" in err
    cut = only_run(tmp_path / "cut")
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "step 3" in summary["error"]
    assert load(cut / "checkpoint.pt")["step"] == 3  # steps 0..2 done, not the checkpoint of step 2
    assert not (cut / "mesh.glb").exists()

    assert main(["generate", "--resume", str(cut)]) == 0
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["status"] == "done" and summary["resumed_from_step"] == 3
    a, b = load(ref / "checkpoint.pt"), load(cut / "checkpoint.pt")
    assert a["step"] == b["step"] == 6
    assert_same_tree(a["scene"], b["scene"], "scene")
    assert_same_tree(a["guidance"], b["guidance"], "guidance")
    assert_same_tree(a["rng"], b["rng"], "rng")
    steps = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))
    ref_metrics = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in ref_metrics] == [json.loads(line)["loss"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    if extra is DENSIFY:  # the run really densified, before and after the cut
        counts = [m["num_primitives"] for m in ref_metrics]
        assert counts[0] < counts[2] < counts[-1] == 400, counts  # grew at steps 2 and 4, then hit the cap


def test_batch_killed_by_sigterm_and_rerun_matches_an_uninterrupted_batch(tmp_path):
    """The issue's check: SIGTERM a real `sds3d batch` process mid-run, rerun the same command."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a snowman\n")
    cmd = [sys.executable, "cli.py", "batch", str(prompts), *FAST, "--steps", "8", "--checkpoint-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every process: same float sums
    ref = subprocess.Popen([*cmd, "--batch-dir", str(tmp_path / "ref")], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cut_cmd = [*cmd, "--batch-dir", str(tmp_path / "cut")]
    cut = subprocess.Popen(cut_cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "cut" / "0000-a-snowman"
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():  # the first checkpoint: the loop (and its handler) is running
        assert cut.poll() is None and time.monotonic() < deadline, cut.stderr.read() if cut.poll() is not None else "timeout"
        time.sleep(0.02)
    cut.send_signal(signal.SIGTERM)
    _, err = cut.communicate(timeout=120)
    assert cut.returncode == 130, err
    assert "interrupted" in err or "stopped by signal" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    stopped_at = load(run / "checkpoint.pt")["step"]
    assert 2 <= stopped_at < 8
    (record,) = [json.loads(line) for line in (tmp_path / "cut" / "manifest.jsonl").read_text().splitlines()]
    assert record["status"] == "interrupted" and record["prompt"] == "a snowman"
    assert "interrupted" in (tmp_path / "cut" / "index.html").read_text()

    rerun = subprocess.run(cut_cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert ref.wait(timeout=300) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["resumed_from_step"] == stopped_at
    a, b = load(tmp_path / "ref" / "0000-a-snowman" / "checkpoint.pt"), load(run / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    ref_summary = json.loads((tmp_path / "ref" / "0000-a-snowman" / "summary.json").read_text())
    assert_phases(ref_summary)  # the first run of its process also has the process's startup
    assert 0.3 < ref_summary["startup_seconds"] < 120
    assert_same_tree(a["scene"], b["scene"], "scene")
    assert_same_tree(a["rng"], b["rng"], "rng")
    records = [json.loads(line) for line in (tmp_path / "cut" / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["interrupted", "done"]


def nan_at_step(monkeypatch, k: int) -> None:
    """Make the guidance loss NaN from step ``k`` on (the gradients, then the parameters, follow)."""
    real = train.build_guidance

    def build(*args, **kwargs):
        guidance = real(*args, **kwargs)

        class NaNAfter:
            def __call__(self, rgb, cameras, step, max_steps, background=None):
                out = guidance(rgb, cameras, step, max_steps, background)
                return GuidanceOutput(out.loss * float("nan"), out.t, out.logs) if step >= k else out

            def __getattr__(self, name):
                return getattr(guidance, name)

        return NaNAfter()

    monkeypatch.setattr(train, "build_guidance", build)


@pytest.mark.parametrize("log_every", [1, 10], ids=["loss-check", "parameter-check"])
def test_nan_stops_the_run_keeps_the_last_good_checkpoint_and_exports_nothing(tmp_path, monkeypatch, capsys, log_every):
    """NaN at step 3: caught by the loss check (logged step) or by the parameter check before the
    checkpoint of step 4; either way checkpoint.pt stays the one of step 2, byte for byte."""
    nan_at_step(monkeypatch, 3)
    seen = {}
    real_save = train.save_checkpoint

    def save(path, state):
        real_save(path, state)
        seen[state["step"]] = Path(path).read_bytes()

    monkeypatch.setattr(train, "save_checkpoint", save)
    args = ["generate", "a snowman", *FAST, "--steps", "6", "--checkpoint-every", "2", "--log-every", str(log_every)]
    assert main([*args, "--output-dir", str(tmp_path)]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "NaN" in err[0] and "last good checkpoint" in err[0], err
    run = only_run(tmp_path)
    assert list(seen) == [2]
    assert (run / "checkpoint.pt").read_bytes() == seen[2]
    ckpt = load(run / "checkpoint.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["scene"]["splats"].values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "TrainingDiverged" in summary["error"]
    assert not any(run.glob("*.glb")) and not any(run.glob("*.ply")) and not any(run.glob("turntable*"))


def test_sigterm_after_nan_does_not_overwrite_the_good_checkpoint(tmp_path, monkeypatch, capsys):
    nan_at_step(monkeypatch, 2)  # NaN parameters after step 2, SIGTERM seen before step 3
    sigterm_at_step(monkeypatch, 2)
    args = ["generate", "a snowman", *FAST, "--steps", "6", "--checkpoint-every", "2", "--log-every", "10"]
    assert main([*args, "--output-dir", str(tmp_path)]) == 1
    assert "NaN" in capsys.readouterr().err
    ckpt = load(only_run(tmp_path) / "checkpoint.pt")
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["scene"]["splats"].values())


def test_unwritable_output_folder_fails_before_any_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "load_priors", lambda *a: pytest.fail("a model loaded"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["generate", "a snowman", *FAST, "--output-dir", str(blocker / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create a run folder" in err[0] and "--output-dir" in err[0], err
    assert blocker.read_text() == "not a folder"


def test_resume_of_a_folder_without_checkpoint_is_one_clear_line(tmp_path, capsys):
    assert main(["generate", "--resume", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config" in err[0], err


def test_full_disk_at_a_checkpoint_fails_clearly_and_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    import sds3d.checkpoint as checkpoint

    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f):
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint of step 4: the disk fills up halfway through
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    args = ["generate", "a snowman", *FAST, "--steps", "6", "--checkpoint-every", "2", "--output-dir", str(tmp_path)]
    assert main(args) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "No space left on device" in err[0] and "free disk space" in err[0], err
    run = only_run(tmp_path)
    assert load(run / "checkpoint.pt")["step"] == 2
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp file left
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert not (run / "mesh.glb").exists()


def test_export_command_re_exports_an_interrupted_run(tmp_path, monkeypatch, capsys):
    """`sds3d export RUN_DIR` writes the asked formats from the checkpoint of a run stopped mid-way,
    records the new mesh in summary.json and keeps the run's status; no checkpoint is one clear line."""
    import shutil

    import trimesh

    with monkeypatch.context() as m:
        sigterm_at_step(m, 2)
        assert main(["generate", "a snowman", *FAST, "--steps", "6", "--output-dir", str(tmp_path)]) == 130
    run = only_run(tmp_path)
    assert not (run / "mesh.glb").exists()
    capsys.readouterr()

    assert main(["export", str(run), "--format", "obj", "ply", "--resolution", "24"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted"  # training did stop early; the export does not hide it
    mesh = summary["mesh"]
    assert {"mesh.obj", "mesh.ply"} <= set(summary["files"]) and not (run / "mesh.glb").exists()
    fid = mesh["fidelity"]
    assert f"{mesh['faces']} faces" in out and f"{mesh['pieces']} piece(s)" in out
    assert f"object PSNR {fid['psnr_object']:.2f} dB (whole frame {fid['psnr']:.2f} dB)" in out
    assert 0.0 < mesh["fidelity"]["mask_iou"] <= 1.0
    ply = trimesh.load(run / "mesh.ply", process=False)
    assert len(ply.faces) == mesh["faces"] and ply.visual.vertex_colors.shape == (len(ply.vertices), 4)
    assert ply.visual.vertex_colors[:, :3].astype(float).std(axis=0).max() > 1.0  # projected colours, not one flat default
    assert len(trimesh.load(run / "mesh.obj", force="mesh", process=False).faces) == mesh["faces"]

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "config.json", bare / "config.json")
    assert main(["export", str(bare)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint" in err[0] and "there is no scene to export" in err[0]
