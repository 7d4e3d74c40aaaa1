"""The batch gallery: index.html content, and what a real headless browser makes of it."""

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sds3d.batch import BatchEntry
from sds3d.config import RunConfig
from sds3d.gallery import write_gallery

PROMPTS = ["a snowman", 'a "quoted" <b>bold</b> & co', "ein Schneemann ☃ </div> <script>alert(1)</script>", "a dragon"]


def make_batch(tmp_path: Path) -> tuple[Path, list[BatchEntry], dict[int, dict]]:
    """Four prompts: done (mp4 + meshes), done (gif only), failed, pending (no record)."""
    entries = [BatchEntry(i, p, (), RunConfig()) for i, p in enumerate(PROMPTS)]
    for e in entries[:3]:
        (tmp_path / e.run_name()).mkdir()
    first = tmp_path / entries[0].run_name()
    for name in ("turntable.mp4", "mesh.glb", "mesh.obj", "gaussians.ply", "checkpoint.pt"):
        (first / name).write_bytes(b"x")
    (tmp_path / entries[1].run_name() / "turntable.gif").write_bytes(b"x")
    records = {
        0: {"index": 0, "status": "done", "error": None, "seconds": 61.4},
        1: {"index": 1, "status": "done", "error": None, "seconds": 2.0},
        2: {"index": 2, "status": "failed", "error": "prompt 'x' names <no> object", "seconds": 0.4},
    }
    return tmp_path, entries, records


class Cards(HTMLParser):
    """Collect each card's data-status, prompt text, status text, links and media sources."""

    def __init__(self) -> None:
        super().__init__()
        self.cards: list[dict] = []
        self.field: str | None = None
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "div" and "card" in cls.split():
            self.cards.append({"data-status": a.get("data-status"), "prompt": "", "status": "", "error": "", "links": [], "media": []})
        if not self.cards:
            return
        card = self.cards[-1]
        if cls == "prompt":
            self.field = "prompt"
        elif cls.startswith("status-"):
            self.field = "status"
        elif cls == "error":
            self.field = "error"
        if tag == "a":
            card["links"].append(a["href"])
        if tag in ("video", "img"):
            card["media"].append(a["src"])

    def handle_endtag(self, tag):
        if tag in ("div", "span"):
            self.field = None

    def handle_data(self, data):
        if self.field and self.cards:
            self.cards[-1][self.field] += data


def parse(page: str) -> list[dict]:
    p = Cards()
    p.feed(page)
    return p.cards


def check_cards(cards: list[dict]) -> None:
    assert [c["prompt"] for c in cards] == PROMPTS
    assert [c["data-status"] for c in cards] == [c["status"] for c in cards] == ["done", "done", "failed", "pending"]
    assert cards[0]["links"] == ["0000-a-snowman/gaussians.ply", "0000-a-snowman/mesh.glb", "0000-a-snowman/mesh.obj"]
    assert cards[0]["media"] == ["0000-a-snowman/turntable.mp4"]
    assert cards[1]["media"] == ["0001-a-quoted-b-bold-b-co/turntable.gif"] and cards[1]["links"] == []
    assert cards[2]["error"] == "prompt 'x' names <no> object"
    assert cards[3]["media"] == [] and cards[3]["links"] == []


def test_gallery_lists_every_prompt_escaped(tmp_path):
    batch_dir, entries, records = make_batch(tmp_path)
    path = write_gallery(batch_dir, entries, records)
    page = path.read_text()
    assert path == batch_dir / "index.html" and "http" not in page  # static, nothing fetched
    assert "<script>" not in page and "4 prompts: 2 done, 1 failed, 1 pending" in page
    assert "61 s" in page and "2 s" in page
    check_cards(parse(page))
    # rewritten as records arrive
    records[3] = {"index": 3, "status": "done", "error": None, "seconds": 5.0}
    assert "4 prompts: 3 done, 1 failed" in write_gallery(batch_dir, entries, records).read_text()
    assert [p.name for p in batch_dir.iterdir() if p.name.startswith(".")] == []  # no temp files left


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (apt-get install chromium)")
def test_headless_chromium_shows_every_entry(tmp_path):
    (tmp_path / "batch").mkdir()
    batch_dir, entries, records = make_batch(tmp_path / "batch")
    path = write_gallery(batch_dir, entries, records)
    out = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", path.resolve().as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    assert "<title>sds3d batch</title>" in dom
    check_cards(parse(dom))
