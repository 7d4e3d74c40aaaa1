"""``sds3d bench demo-strip``: the README's picture, a strip of turntable frames of one run.

Runs the exemplar demo (``sds3d generate "a snowman" --prior exemplar --device cpu``: the
exemplar recipe, SDS on 3D Gaussians, 300 steps) or takes an existing run folder (``--run-dir``),
and writes one PNG of two rows: ``frames`` frames of the scene's ``turntable.mp4`` and the same
frames of the exported mesh's ``turntable_mesh.mp4`` (both on the evaluation orbit, front view
first, azimuths 0, 360/frames, ... degrees), each row labelled. Frames are read back from the
run's own videos (``.gif`` when the run had no ffmpeg), so the picture shows exactly what the
run wrote.

    sds3d bench demo-strip                                   # run the demo, write docs/images/demo_strip.png
    sds3d bench demo-strip --run-dir outputs/a-snowman-...   # picture of an existing run
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageDraw

from sds3d.types import SDS3DError

ROWS = (("turntable", "scene"), ("turntable_mesh", "exported mesh"))
"""(video stem in the run folder, row label)."""
LABEL_HEIGHT = 16


@dataclass(frozen=True)
class DemoStripConfig:
    """Picture for the README: turntable frames of the exemplar demo's scene and mesh."""

    run_dir: Path | None = None
    """An existing run folder (with turntable.mp4 and turntable_mesh.mp4); default: run the
    demo first (about 2 minutes on a CPU)."""
    prompt: str = "a snowman"
    """Prompt of the demo run (a built-in exemplar object)."""
    scene: Literal["gaussians", "nerf"] = "gaussians"
    """Scene type of the demo run."""
    output_dir: Path = Path("outputs")
    """Parent folder of the demo's run folder."""
    device: str = "cpu"
    """Device of the demo run."""
    frames: int = 6
    """Frames per row, evenly spaced over the turntable from the front view."""
    out: Path = Path("docs/images/demo_strip.png")
    """The PNG to write."""

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise SDS3DError(f"--frames must be at least 1 (got {self.frames})")


def read_video(run_dir: Path, stem: str) -> np.ndarray:
    """All frames [N,H,W,3] uint8 of ``run_dir/stem.mp4`` (or ``.gif``)."""
    for suffix in (".mp4", ".gif"):
        path = run_dir / f"{stem}{suffix}"
        if path.exists():
            frames = np.stack([np.asarray(f)[..., :3] for f in imageio.mimread(path, memtest=False)])
            return frames.astype(np.uint8)
    raise SDS3DError(f"{run_dir} has no {stem}.mp4 or .gif: pass a finished run folder of sds3d generate (with its export)")


def pick_frames(video: np.ndarray, n: int) -> np.ndarray:
    """``n`` frames evenly spaced over the video (a full turn), starting with frame 0."""
    idx = (np.arange(n) * len(video)) // n
    return video[idx]


def strip_image(rows: list[tuple[str, np.ndarray]]) -> Image.Image:
    """Rows of frames [n,H,W,3] side by side, each under a label band, on white."""
    h, w = rows[0][1].shape[1:3]
    n = max(len(frames) for _, frames in rows)
    img = Image.new("RGB", (n * w, len(rows) * (h + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(img)
    for r, (label, frames) in enumerate(rows):
        top = r * (h + LABEL_HEIGHT)
        draw.text((4, top + 2), label, fill=(0, 0, 0))
        for c, frame in enumerate(frames):
            if frame.shape[:2] != (h, w):
                frame = np.asarray(Image.fromarray(frame).resize((w, h), Image.LANCZOS))
            img.paste(Image.fromarray(frame), (c * w, top + LABEL_HEIGHT))
    return img


def run_demo(cfg: DemoStripConfig) -> Path:
    """``sds3d generate PROMPT --prior exemplar --scene S --device D --output-dir O``; the run folder."""
    from sds3d.recipes import exemplar_recipe
    from sds3d.train import generate

    run = dataclasses.replace(exemplar_recipe(scene=cfg.scene), device=cfg.device, output_dir=cfg.output_dir)
    return Path(generate(cfg.prompt, run).run_dir)


def run_demo_strip(cfg: DemoStripConfig) -> Path:
    """Write the strip of ``cfg.run_dir`` (running the demo when it is None); returns the PNG."""
    run_dir = cfg.run_dir if cfg.run_dir is not None else run_demo(cfg)
    rows = [(label, pick_frames(read_video(run_dir, stem), cfg.frames)) for stem, label in ROWS]
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    strip_image(rows).save(cfg.out, optimize=True)
    print(f"{cfg.out}: {cfg.frames} frames of {run_dir}/{{turntable,turntable_mesh}} ({cfg.out.stat().st_size // 1024} KB)")
    return cfg.out
