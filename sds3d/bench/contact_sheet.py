"""Contact sheets of the exemplar benchmark: truth vs result, one row per object.

Row layout (``tile`` px per image): a label strip ``LABEL_WIDTH`` wide (object name, family,
normalized score), then the truth's views, then the result's views (the same cameras). Without
results (``results=None``) a row is the label and the truth views only: the sheet of a library.
Sheet size: width ``LABEL_WIDTH + tile * views * (2 or 1)``, height ``tile * rows``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

LABEL_WIDTH = 200
"""Width in pixels of the label strip at the left of each row."""
SHEET_AZIMUTHS = (0.0, 90.0, 180.0)
"""Views of a row: front, side (the object's left), back."""


@dataclass(frozen=True)
class SheetRow:
    """One object of a sheet: its label lines and [V,H,W,3] images in [0,1]."""

    label: str
    truth: torch.Tensor
    result: torch.Tensor | None = None


def _to_uint8(images: torch.Tensor, tile: int) -> list[Image.Image]:
    out = []
    for img in images:
        arr = (img.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
        pil = Image.fromarray(arr)
        out.append(pil if pil.size == (tile, tile) else pil.resize((tile, tile), Image.NEAREST))
    return out


def contact_sheet(rows: list[SheetRow], path: Path, tile: int = 128) -> tuple[int, int]:
    """Write the sheet PNG to ``path``; returns its (width, height) in pixels."""
    if not rows:
        raise ValueError("contact_sheet: no rows")
    views = len(rows[0].truth)
    with_results = any(r.result is not None for r in rows)
    width = LABEL_WIDTH + tile * views * (2 if with_results else 1)
    sheet = Image.new("RGB", (width, tile * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        y = i * tile
        lines = [w for part in row.label.split("\n") for w in textwrap.wrap(part, 30)]
        draw.multiline_text((4, y + 4), "\n".join(lines[: tile // 12]), fill=(0, 0, 0), spacing=2)
        for j, im in enumerate(_to_uint8(row.truth, tile)):
            sheet.paste(im, (LABEL_WIDTH + j * tile, y))
        if row.result is not None:
            for j, im in enumerate(_to_uint8(row.result, tile)):
                sheet.paste(im, (LABEL_WIDTH + (views + j) * tile, y))
        draw.line([(0, y), (width, y)], fill=(200, 200, 200))
    if with_results:
        x = LABEL_WIDTH + views * tile
        draw.line([(x, 0), (x, sheet.height)], fill=(255, 0, 0), width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return sheet.size


def library_sheet(objects: list, path: Path, tile: int = 128) -> tuple[int, int]:
    """The truth-only sheet of library objects (:class:`sds3d.priors.exemplar_library.LibraryObject`)."""
    from sds3d.cameras import CameraConfig, orbit_cameras
    from sds3d.render.raycast import raycast_mesh

    cc = CameraConfig()
    n = len(SHEET_AZIMUTHS)
    cams = orbit_cameras([cc.eval_elevation] * n, list(SHEET_AZIMUTHS), cc.eval_distance, cc.eval_fovy, tile, tile)
    rows = []
    for obj in objects:
        rgb, _, _ = raycast_mesh(obj.mesh, cams, (1.0, 1.0, 1.0), "lambert")
        rows.append(SheetRow(f"{obj.prompt}\n[{obj.family or '-'}]", rgb))
    return contact_sheet(rows, path, tile)
