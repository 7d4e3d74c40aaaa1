"""``sds3d batch``: many prompts, one folder, resumable, on one process, shards, or a Ray cluster.

One pass, in this order:

1. **read**: every line of every prompt file is parsed and its config resolved and validated
   (:mod:`sds3d.batch.lines`); any rejected line is reported as ``FILE:LINE: reason`` and the
   batch exits 2 before any work starts;
2. **plan**: the prompts of this shard whose run folder is not done;
3. **run** on an engine: :class:`~sds3d.batch.local.LocalEngine` (in this process, the default)
   or :class:`~sds3d.batch.ray_engine.RayEngine` (``--engine ray``); both call
   :func:`sds3d.batch.runner.run_entry` for each prompt;
4. **record**: each finished attempt is appended to ``manifest.jsonl`` and ``index.html`` is
   rewritten (:mod:`sds3d.batch.manifest`).

The batch folder holds one run folder per prompt (``NNNN-<slug>``, stable across reruns, shards
and engines). Rerunning the same command skips prompts whose run is done and resumes the others
from their checkpoints.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Mapping

from sds3d.batch.lines import BadLines, BatchEntry, parse_line, read_entries
from sds3d.batch.manifest import append_manifest, done_record, read_manifest, run_status
from sds3d.types import SDS3DError

__all__ = ["BatchEntry", "parse_line", "read_entries", "read_manifest", "run_batch", "parse_shard"]


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``'I/N'``, or RANK/WORLD_SIZE under torchrun, or ``(0, 1)``."""
    if shard is None:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return 0, 1
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise SDS3DError(f"--shard {shard!r}: write I/N, e.g. --shard 0/4") from None
    if not (n > 0 and 0 <= i < n):
        raise SDS3DError(f"--shard {shard!r}: need 0 <= I < N")
    return i, n


def run_batch(cmd: Any, typed: Mapping[str, Any]) -> int:
    """Run a :class:`sds3d.cli.Batch` command with the run options typed on its command line;
    exit code 2 for bad lines, 1 if any prompt failed."""
    ray = cmd.engine == "ray"
    if ray and cmd.shard is not None:
        raise SDS3DError("--shard splits a batch between processes of the local engine; with --engine ray the cluster shares out the prompts: drop --shard")
    typed = dict(typed)
    if not ray and cmd.shard is None and "LOCAL_RANK" in os.environ and typed.get("device", "auto") == "auto":
        typed["device"] = f"cuda:{int(os.environ['LOCAL_RANK'])}"  # torchrun: one GPU per process
    shard_i, shard_n = (0, 1) if ray else parse_shard(cmd.shard)
    try:
        entries = read_entries(tuple(cmd.files), typed, check_device=not ray)
    except BadLines as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        print(f"sds3d: error: {len(e.lines)} bad line(s); nothing was run. Fix them and run the same command again", file=sys.stderr)
        return 2
    batch_dir = cmd.batch_dir or entries[0].cfg.output_dir / f"batch-{Path(cmd.files[0]).stem}"
    try:
        batch_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SDS3DError(f"cannot create batch folder {batch_dir}: {e.strerror}; pass a writable --batch-dir") from None

    mine = entries[shard_i::shard_n]
    todo = [e for e in mine if run_status(batch_dir / e.run_name()) != "done"]
    recorded = read_manifest(batch_dir)
    for e in mine:
        if e not in todo:
            print(f"skip (done): {e.prompt}")
            if recorded.get(e.index, {}).get("status") != "done":  # finished after its driver was killed
                append_manifest(batch_dir, done_record(e, batch_dir))
    append_manifest(batch_dir, None, entries)  # the gallery shows every prompt from the start
    failed = 0

    def record(rec: dict[str, Any]) -> None:
        nonlocal failed
        failed += rec["status"] == "failed"
        append_manifest(batch_dir, rec, entries)

    if ray:
        from sds3d.batch.ray_engine import RayEngine

        engine: Any = RayEngine(entries, batch_dir, address=cmd.ray_address, cpus_per_run=cmd.cpus_per_run,
                                gpus_per_run=cmd.gpus_per_run, retries=cmd.retries)  # fmt: skip
    else:
        from sds3d.batch.local import LocalEngine

        engine = LocalEngine(entries, batch_dir)
    if todo:
        engine.run(todo, record)
    append_manifest(batch_dir, None, entries)
    print(f"batch folder: {batch_dir} ({len(mine) - len(todo)} already done, {len(todo) - failed} run, {failed} failed)")
    return 1 if failed else 0
