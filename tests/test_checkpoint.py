import pytest
import torch

from sds3d.checkpoint import load_checkpoint, save_checkpoint, write_json_atomic
from sds3d.types import SDS3DError


def test_round_trip_and_atomic_replace(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 3, "x": torch.arange(4)})
    save_checkpoint(path, {"step": 4, "x": torch.arange(5)})
    got = load_checkpoint(path)
    assert got["step"] == 4 and torch.equal(got["x"], torch.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp files left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(SDS3DError, match="cannot write"):
        save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_unwritable_folder_is_a_clear_error(tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    with pytest.raises(SDS3DError, match="cannot write"):
        write_json_atomic(not_a_dir / "x.json", {"a": 1})


def test_missing_and_damaged_checkpoints(tmp_path):
    with pytest.raises(SDS3DError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SDS3DError, match="damaged"):
        load_checkpoint(bad)


# ---------------------------------------------------------------------- data, not code


class _CreatesAFile:
    """Unpickling this object would create ``target`` (what a crafted checkpoint could do)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_a_malicious_checkpoint_runs_nothing_and_is_one_line(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "scene": _CreatesAFile(str(target))}, path)
    with pytest.raises(SDS3DError, match="refusing to load checkpoint") as e:
        load_checkpoint(path)
    assert "asks to run" in str(e.value) and "\n" not in str(e.value)
    assert not target.exists()


def test_export_and_resume_refuse_a_crafted_or_incomplete_checkpoint(tmp_path, capsys):
    from conftest import EXEMPLAR_CLI_FAST

    from sds3d.cli import main

    assert main(["generate", "a snowman", *EXEMPLAR_CLI_FAST, "--steps", "2", "--output-dir", str(tmp_path)]) == 0
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    capsys.readouterr()
    target = tmp_path / "pwned"
    cases = [({"step": 1, "scene": _CreatesAFile(str(target))}, "refusing to load checkpoint"),
             ({"step": 1, "guidance": {}, "rng": {}}, "has no 'scene' entry")]  # fmt: skip
    for state, message in cases:
        torch.save(state, run_dir / "checkpoint.pt")
        for args in (["export", str(run_dir)], ["generate", "--resume", str(run_dir)]):
            assert main(args) == 1, args
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and message in err[0] and str(run_dir / "checkpoint.pt") in err[0], (args, err)
            assert not target.exists()


def test_incomplete_and_mismatched_checkpoints_are_one_line(tmp_path):
    from sds3d.checkpoint import check_like, require_entries

    path = tmp_path / "c.pt"
    with pytest.raises(SDS3DError, match="has no 'scene' entry"):
        require_entries({"step": 3}, path, {"step": int, "scene": dict})
    with pytest.raises(SDS3DError, match="'scene' is a list"):
        require_entries({"scene": []}, path, {"scene": dict})
    fresh = {"splats": {"means": torch.zeros(4, 3), "shN": torch.zeros(4, 15, 3)}, "optimizers": {"means": {}}}
    grown = {"splats": {"means": torch.zeros(9, 3), "shN": torch.zeros(9, 15, 3)}, "optimizers": {"means": {"state": {0: 1}}}}
    check_like(grown, fresh, path, "scene")  # more Gaussians, the same structure
    with pytest.raises(SDS3DError, match=r"scene.splats.shN has shape \(9, 3, 3\) where this run's config makes \(4, 15, 3\)"):
        check_like({**grown, "splats": {**grown["splats"], "shN": torch.zeros(9, 3, 3)}}, fresh, path, "scene")
    with pytest.raises(SDS3DError, match="lacks \\['means'\\]"):
        check_like({**grown, "splats": {"shN": grown["splats"]["shN"]}}, fresh, path, "scene")


def test_a_checkpoint_with_numpy_rng_state_from_before_loads_safely(tmp_path):
    """Checkpoints written before states were tensors hold numpy's random state as an array."""
    import numpy as np

    path = tmp_path / "old.pt"
    state = np.random.RandomState(3).get_state()
    torch.save({"step": 2, "rng": {"numpy": state}}, path)
    got = load_checkpoint(path)["rng"]["numpy"]
    assert got[0] == "MT19937" and np.array_equal(got[1], state[1]) and got[2] == state[2]
