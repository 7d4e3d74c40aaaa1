"""The batch gallery: a static ``index.html`` (no server, no internet) over every prompt.

One card per prompt: its turntable (mp4 or gif), status, wall time and links to its mesh
files. Rewritten atomically after each prompt finishes.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

from sds3d.checkpoint import atomic_write

MESH_SUFFIXES = (".glb", ".obj", ".ply")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 1rem; }
.card { background: white; border: 1px solid #ddd; border-radius: 6px; padding: .5rem; }
.card video, .card img { width: 100%; aspect-ratio: 1; object-fit: contain; background: #eee; }
.placeholder { width: 100%; aspect-ratio: 1; background: #eee; display: flex; align-items: center; justify-content: center; color: #888; }
.status-done { color: #1a7f37; } .status-failed { color: #cf222e; } .status-interrupted, .status-pending { color: #9a6700; }
.prompt { font-weight: 600; margin: .4rem 0 .2rem; } .meta { font-size: .85rem; } .error { font-size: .8rem; color: #cf222e; }
"""


def _media(run_dir: Path, rel: str) -> str:
    for name in ("turntable.mp4", "turntable.gif"):
        if (run_dir / name).exists():
            src = html.escape(f"{rel}/{name}")
            if name.endswith(".mp4"):
                return f'<video src="{src}" autoplay loop muted playsinline></video>'
            return f'<img src="{src}" alt="turntable">'
    return '<div class="placeholder">no turntable</div>'


def _card(entry: Any, record: dict[str, Any] | None, batch_dir: Path) -> str:
    rel = entry.run_name()
    run_dir = batch_dir / rel
    status = record["status"] if record else "pending"
    seconds = f"{record['seconds']:.0f} s" if record and record.get("seconds") is not None else "-"
    links = " ".join(
        f'<a href="{html.escape(rel + "/" + p.name)}">{html.escape(p.name)}</a>'
        for p in sorted(run_dir.glob("*")) if p.suffix in MESH_SUFFIXES
    )
    error = f'<div class="error">{html.escape(record["error"])}</div>' if record and record.get("error") else ""
    return (
        f'<div class="card" data-status="{status}">{_media(run_dir, rel)}'
        f'<div class="prompt">{html.escape(entry.prompt)}</div>'
        f'<div class="meta"><span class="status-{status}">{status}</span> · {seconds} · {links or "no mesh"}</div>'
        f"{error}</div>"
    )


def write_gallery(batch_dir: Path, entries: Sequence[Any], records: dict[int, dict[str, Any]]) -> Path:
    """Write ``batch_dir/index.html`` for all entries (every shard's prompts)."""
    counts: dict[str, int] = {}
    for e in entries:
        s = records[e.index]["status"] if e.index in records else "pending"
        counts[s] = counts.get(s, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    cards = "\n".join(_card(e, records.get(e.index), batch_dir) for e in entries)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>sds3d batch</title>"
        f"<style>{STYLE}</style></head><body><h1>sds3d batch</h1><p id='summary'>{len(entries)} prompts: {summary}</p>"
        f"<div class='grid'>\n{cards}\n</div></body></html>"
    )
    path = batch_dir / "index.html"
    atomic_write(path, lambda f: f.write(page.encode()))
    return path
