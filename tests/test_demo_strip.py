"""The README picture: frames are taken evenly over each turntable and laid out in two rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sds3d.bench.demo_strip import LABEL_HEIGHT, DemoStripConfig, pick_frames, run_demo_strip
from sds3d.export.turntable import write_video
from sds3d.types import SDS3DError

SIZE = 32


def coloured_video(n: int, channel: int) -> np.ndarray:
    """n frames of one flat colour each: frame k has value 20 k in ``channel``, 128 elsewhere."""
    frames = np.full((n, SIZE, SIZE, 3), 128, dtype=np.uint8)
    frames[..., channel] = (20 * np.arange(n, dtype=np.uint8))[:, None, None]
    return frames


def test_pick_frames_is_a_full_turn_from_the_front() -> None:
    video = np.arange(60)[:, None]
    assert pick_frames(video, 6)[:, 0].tolist() == [0, 10, 20, 30, 40, 50]
    assert pick_frames(video, 4)[:, 0].tolist() == [0, 15, 30, 45]


def test_strip_of_a_run_folder(tmp_path: Path) -> None:
    write_video(coloured_video(12, 0), tmp_path / "turntable.mp4")
    write_video(coloured_video(12, 2), tmp_path / "turntable_mesh.mp4")
    out = run_demo_strip(DemoStripConfig(run_dir=tmp_path, frames=4, out=tmp_path / "img" / "strip.png"))
    img = np.asarray(Image.open(out).convert("RGB")).astype(float)
    assert img.shape == (2 * (SIZE + LABEL_HEIGHT), 4 * SIZE, 3)
    for row, channel in enumerate((0, 2)):
        for col, frame in enumerate((0, 3, 6, 9)):  # 12 frames, 4 picks
            top = row * (SIZE + LABEL_HEIGHT) + LABEL_HEIGHT
            cell = img[top + 4 : top + SIZE - 4, col * SIZE + 4 : (col + 1) * SIZE - 4]
            assert abs(cell[..., channel].mean() - 20 * frame) < 6  # video compression tolerance
            assert abs(cell[..., 1].mean() - 128) < 6


def test_missing_video_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(SDS3DError, match="turntable.mp4"):
        run_demo_strip(DemoStripConfig(run_dir=tmp_path, out=tmp_path / "x.png"))
