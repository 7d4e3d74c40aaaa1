"""Running one batch entry: the code every engine calls, in whatever process runs the prompt.

:func:`run_entry` trains one prompt into its run folder (resuming from its checkpoint when one
exists) and returns the manifest record; an ordinary error becomes a ``failed`` record with a
one-line message, Ctrl-C/SIGTERM or a stop request an ``interrupted`` one. :class:`PriorCache`
keeps every loaded prior for the life of the process, keyed by
:class:`sds3d.factory.PriorSpec` (everything that decides the loaded model), and encodes the
prompts of all entries that use a prior when it first loads.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from sds3d.batch.lines import BatchEntry
from sds3d.factory import PriorSpec, build_prompts, load_prior, precompute_prompts, prior_specs
from sds3d.memory import check_memory
from sds3d.types import Prior, SDS3DError


class PriorCache:
    """Loaded priors of one process, shared by every prompt whose spec is the same."""

    def __init__(self, entries: Sequence[BatchEntry]) -> None:
        self.entries = list(entries)
        self.loaded: dict[PriorSpec, Prior] = {}

    def get(self, entry: BatchEntry, device: torch.device) -> tuple[Prior | None, Prior | None]:
        specs = prior_specs(entry.cfg, device)
        new = [s for s in specs if s is not None and s not in self.loaded]
        if new and not self.loaded:  # the first load of this process: refuse what cannot fit
            check_memory(entry.cfg, device)
        for spec in new:
            self.loaded[spec] = load_prior(spec)
        for spec in new:
            users = [e for e in self.entries if spec in _specs_or_none(e, device)] or [entry]
            precompute_prompts((self.loaded[spec],), [build_prompts(e.prompt, e.cfg) for e in users])
        return tuple(None if s is None else self.loaded[s] for s in specs)  # type: ignore[return-value]


def _specs_or_none(entry: BatchEntry, device: torch.device) -> tuple[PriorSpec | None, ...]:
    try:
        return prior_specs(entry.cfg, device)
    except SDS3DError:  # e.g. an --mv-device this machine lacks: that entry fails on its own
        return ()


@contextmanager
def run_folder_lock(run_dir: Path, wait_s: float = 60.0) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while a prompt trains there, so two processes never write one run
    folder (a worker of a killed driver can outlive it by a few seconds): waits up to ``wait_s``.
    The file holds the host and pid of the process that trains there."""
    with open(run_dir / ".lock", "a+") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                f.truncate(0)
                f.write(f"{socket.gethostname()} {os.getpid()}\n")
                f.flush()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SDS3DError(f"run folder {run_dir} is in use by another process for over {wait_s:.0f} s; stop it, or wait and rerun") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def one_line(e: BaseException) -> str:
    """An error as the one line a record keeps."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, SDS3DError) else f"{type(e).__name__}: {text}".rstrip(": ")


def run_entry(
    entry: BatchEntry,
    batch_dir: Path,
    priors: PriorCache,
    *,
    device: torch.device | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``entry`` into ``batch_dir/<run name>`` and return its manifest record."""
    from sds3d.train import CHECKPOINT, RunInterrupted, generate

    run_dir = batch_dir / entry.run_name()
    record = entry.record(host=socket.gethostname(), pid=os.getpid())
    t0 = time.perf_counter()
    try:
        device = device or entry.cfg.resolve_device()
        loaded = priors.get(entry, device)
        run_dir.mkdir(exist_ok=True)
        with run_folder_lock(run_dir):
            resume = (run_dir / CHECKPOINT).exists()
            result = generate(entry.prompt, entry.cfg, run_dir=run_dir, resume=resume, priors=loaded, progress=progress, should_stop=should_stop)
        record.update(status="done", error=None, seconds=result.seconds, resumed_from_step=result.summary.get("resumed_from_step"))
    except (RunInterrupted, KeyboardInterrupt) as e:
        record.update(status="interrupted", error=one_line(e) if str(e) else "interrupted", seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - one prompt's failure must not stop the batch
        record.update(status="failed", error=one_line(e), seconds=time.perf_counter() - t0)
    return record
