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
