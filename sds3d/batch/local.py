"""The in-process engine: the prompts one after another in this process, priors loaded once.

Several processes can share one batch (``--shard I/N``, SLURM arrays, torchrun): each takes its
own slice of the prompts, and they share the manifest through its file lock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from sds3d.batch.lines import BatchEntry
from sds3d.batch.runner import PriorCache, run_entry


class LocalEngine:
    """Runs prompts in this process; a Ctrl-C or SIGTERM checkpoints the running prompt and
    stops the batch (recorded ``interrupted``; rerun the same command to resume)."""

    def __init__(self, entries: Sequence[BatchEntry], batch_dir: Path) -> None:
        self.batch_dir = batch_dir
        self.priors = PriorCache(entries)

    def run(self, todo: Sequence[BatchEntry], record: Callable[[dict[str, Any]], None]) -> None:
        from sds3d.train import RunInterrupted

        for n, entry in enumerate(todo, 1):
            print(f"[{n}/{len(todo)}] {entry.prompt}")
            rec = run_entry(entry, self.batch_dir, self.priors)
            if rec["status"] == "failed":
                print(f"  failed: {rec['error']}")
            record(rec)
            if rec["status"] == "interrupted":
                raise RunInterrupted(f"batch interrupted at {entry.prompt!r} ({rec['error']}); rerun the same command to resume")
