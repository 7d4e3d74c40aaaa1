"""Prompts: view-dependent variants, negative prompts, and prompt files.

View-dependent suffixes (DreamFusion): ``"{p}, front view"`` for |az| < 45°, ``"{p}, back view"``
for |az| > 135°, ``"{p}, overhead view"`` for el > 60° (overrides), otherwise ``"{p}, side view"``.
Thresholds live in :class:`sds3d.cameras.ViewConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sds3d.cameras import Cameras, ViewConfig, view_buckets
from sds3d.types import SDS3DError

NFSD_NEGATIVE_PROMPT = (
    "unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, "
    "low-resolution, gloomy"
)


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one run: the text, its negative, and how views change it."""

    prompt: str
    negative: str = ""
    view_dependent: bool = True
    views: ViewConfig = field(default_factory=ViewConfig)
    perp_neg: bool = False  # guidance methods apply Perp-Neg to view-dependent prompts

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise SDS3DError("the prompt is empty: pass the text to generate, e.g. sds3d generate \"a corgi\"")

    def buckets(self, cameras: Cameras) -> list[str]:
        """Per camera: "front" | "side" | "back" | "overhead"."""
        return view_buckets(cameras.elevation, cameras.azimuth, self.views)

    def for_cameras(self, cameras: Cameras) -> list[str]:
        """The conditional prompt for each camera (with its view suffix if view-dependent)."""
        if not self.view_dependent:
            return [self.prompt] * len(cameras)
        return [view_prompt(self.prompt, b) for b in self.buckets(cameras)]

    def negatives(self, n: int) -> list[str]:
        return [self.negative] * n

    def empties(self, n: int) -> list[str]:
        return [""] * n

    def unconditionals(self, n: int) -> list[str]:
        """The unconditional prompt u of classifier-free guidance: the negative prompt if given, else ""."""
        return self.negatives(n) if self.negative else self.empties(n)


def view_prompt(prompt: str, bucket: str) -> str:
    return f"{prompt}, {bucket} view"


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts of a file: one a line, ``#`` comments and blank lines skipped, stripped."""
    return [line for _, line in read_prompt_lines(path)]


def read_prompt_lines(path: str | Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of every prompt line of a file (``#`` comment lines
    and blank lines skipped)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SDS3DError(f"prompt file not found: {p}; pass a text file with one prompt a line") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SDS3DError(f"cannot read prompt file {p}: {e}; pass a readable UTF-8 text file") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if line:
            out.append((number, line))
    return out
