"""The batch folder's records: ``manifest.jsonl`` and ``index.html``.

``manifest.jsonl`` holds one JSON record per finished attempt of a prompt (index, prompt,
overrides, run folder, status done/failed/interrupted, error, seconds, and where it ran); the
newest record per prompt wins. Records are appended under a file lock, so shards of the
in-process engine on a shared disk can share the file; the Ray engine writes them from its
driver alone. ``index.html`` (every prompt from the start) is rewritten with each record.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from sds3d.gallery import write_gallery
from sds3d.types import SDS3DError

MANIFEST = "manifest.jsonl"


@contextmanager
def manifest_lock(batch_dir: Path) -> Iterator[IO[str]]:
    """The manifest opened for appending under an exclusive lock (shards take turns)."""
    try:
        f = open(batch_dir / MANIFEST, "a")
    except OSError as e:
        raise SDS3DError(f"cannot write {batch_dir / MANIFEST}: {e.strerror}; pass a writable --batch-dir") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def append_manifest(batch_dir: Path, record: dict[str, Any] | None, entries: Sequence[Any] | None = None) -> None:
    """Append one JSON line (safe for concurrent shards); with ``entries``, also rewrite
    index.html under the same lock, so whichever shard writes it last has seen every record."""
    with manifest_lock(batch_dir) as f:
        if record is not None:
            try:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise SDS3DError(f"cannot write {batch_dir / MANIFEST}: {e.strerror}; free disk space and rerun the batch") from None
        if entries is not None:
            write_gallery(batch_dir, entries, read_manifest(batch_dir))


def read_manifest(batch_dir: Path) -> dict[int, dict[str, Any]]:
    """Newest record per prompt index."""
    out: dict[int, dict[str, Any]] = {}
    path = batch_dir / MANIFEST
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(rec, dict) and isinstance(rec.get("index"), int):
            out[rec["index"]] = rec
    return out


def run_status(run_dir: Path) -> str | None:
    """The ``status`` of a run folder's summary.json (None if it has none, or an unreadable one)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return summary.get("status") if isinstance(summary, dict) else None


def done_record(entry: Any, batch_dir: Path) -> dict[str, Any]:
    """The record of a run folder (a :class:`~sds3d.batch.lines.BatchEntry`'s) that finished
    without its record being written (its driver was killed between the two), from the run's
    summary.json."""
    summary = json.loads((batch_dir / entry.run_name() / "summary.json").read_text())
    return entry.record(status="done", error=None, seconds=summary.get("seconds"), resumed_from_step=summary.get("resumed_from_step"),
                        note="recorded from summary.json on a rerun")  # fmt: skip
