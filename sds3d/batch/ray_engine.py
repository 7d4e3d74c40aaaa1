"""The Ray engine (``sds3d batch FILE --engine ray``): the prompts of a batch on a Ray cluster.

- **Cluster**: ``--ray-address auto|HOST:PORT`` joins a running cluster; without it (and without
  ``RAY_ADDRESS``) a local Ray instance sized to this machine is started and stopped again.
- **Workers**: one actor per GPU (``--gpus-per-run``) or per ``--cpus-per-run`` CPUs on machines
  without GPUs; each loads a prior once and keeps it for every prompt it runs
  (:class:`~sds3d.batch.runner.PriorCache`). Prompts are handed out one at a time as workers
  free up, so a slow prompt holds nobody back.
- **Faults**: when a worker process or its node dies, its prompt goes back to the front of the
  queue (up to ``--retries`` times) and resumes from its latest checkpoint on another worker. An
  ordinary error inside a prompt is recorded ``failed`` with its one-line message and not
  retried. A request that no node can meet (a GPU per run where there are none) is a one-line
  error before anything starts.
- **Records**: the driver alone writes ``manifest.jsonl`` and ``index.html`` (one final record per
  prompt and attempt that ended) and prints done / running / failed / queued with an ETA.
- **Ctrl-C**: the driver asks every running prompt to checkpoint and stop, records them
  ``interrupted`` and exits; the same command again skips what is done and resumes the rest.
- **Shared disk**: run folders live under the batch folder, which every worker must see at the
  same path; each worker checks that it can read a token the driver wrote there and can write
  there, and the batch stops at the start with one line if one cannot.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

from sds3d.batch.lines import BatchEntry
from sds3d.batch.runner import PriorCache, one_line, run_entry
from sds3d.types import SDS3DError

START_TIMEOUT_S = 300.0  # workers that have not started by then (imports, a busy cluster) fail the batch
STOP_GRACE_S = 120.0  # after Ctrl-C: how long running prompts get to write their checkpoints


class BatchWorker:
    """One Ray actor: runs prompts one at a time and keeps its loaded priors across them.
    Threaded (two calls at once) so that :meth:`stop` reaches a running :meth:`run`."""

    def __init__(self, entries: Sequence[BatchEntry], batch_dir: str, cpus: int) -> None:
        import torch

        torch.set_num_threads(max(1, cpus))
        self.batch_dir = Path(batch_dir)
        self.priors = PriorCache(entries)
        self.stopping = threading.Event()

    def check(self, token_name: str, token: str) -> str | None:
        """None if this worker sees the driver's batch folder and can write there, else why not."""
        where = f"worker on {socket.gethostname()} (pid {os.getpid()})"
        try:
            seen = (self.batch_dir / token_name).read_text()
        except OSError as e:
            return f"{where} cannot see the batch folder {self.batch_dir} ({e.strerror}); put --batch-dir on a disk every node mounts at the same path"
        if seen != token:
            return f"{where} sees another folder at {self.batch_dir} (the driver's token is not there); put --batch-dir on a disk every node shares"
        if not os.access(self.batch_dir, os.W_OK):
            return f"{where} cannot write to the batch folder {self.batch_dir}; make it writable for the Ray workers"
        return None

    def run(self, entry: BatchEntry) -> dict[str, Any]:
        return run_entry(entry, self.batch_dir, self.priors, should_stop=self.stopping.is_set, progress=False)

    def stop(self) -> None:
        self.stopping.set()


class RayEngine:
    """Hands the prompts of a batch to Ray workers; see the module docstring."""

    def __init__(self, entries: Sequence[BatchEntry], batch_dir: Path, *, address: str | None = None,
                 cpus_per_run: int = 1, gpus_per_run: int | None = None, retries: int = 2) -> None:  # fmt: skip
        if cpus_per_run < 1 or (gpus_per_run is not None and gpus_per_run < 0) or retries < 0:
            raise SDS3DError("--cpus-per-run must be >= 1, --gpus-per-run >= 0 and --retries >= 0")
        self.entries = list(entries)
        self.batch_dir = batch_dir.resolve()
        self.address = address
        self.cpus = cpus_per_run
        self.gpus = gpus_per_run
        self.retries = retries

    # ------------------------------------------------------------------ cluster and workers

    def _connect(self) -> bool:
        """Join or start Ray; True if this call started it (and so stops it)."""
        import ray

        if ray.is_initialized():
            return False
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
        if self.address is None and "RAY_ADDRESS" not in os.environ:
            kwargs["num_cpus"] = len(os.sched_getaffinity(0))
        try:
            ray.init(address=self.address, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise SDS3DError(f"cannot reach the Ray cluster at {self.address or os.environ.get('RAY_ADDRESS')}: {one_line(e)}; check --ray-address (auto or HOST:PORT)") from None
        return True

    def _worker_count(self) -> tuple[int, int]:
        """(workers, GPUs per worker) the alive nodes can hold; one line if none can."""
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        devices = {e.cfg.device for e in self.entries}
        gpus = self.gpus
        if gpus is None:
            gpus = 1 if any(n.get("GPU", 0) >= 1 for n in nodes) and devices != {"cpu"} else 0
        if gpus == 0 and any(d.startswith("cuda") for d in devices):
            raise SDS3DError("the batch asks for --device cuda but its workers get no GPU; pass --gpus-per-run 1 (or --device auto/cpu)")
        fits = [min(int(n.get("CPU", 0) // self.cpus), int(n.get("GPU", 0) // gpus) if gpus else 1 << 30) for n in nodes]
        if sum(fits) == 0:
            have = ", ".join(f"{n.get('CPU', 0):g} CPU / {n.get('GPU', 0):g} GPU" for n in nodes) or "no alive nodes"
            raise SDS3DError(
                f"no node of the Ray cluster can hold a worker with {self.cpus} CPU(s) and {gpus} GPU(s) (nodes: {have}); "
                "lower --cpus-per-run, set --gpus-per-run 0 with --device cpu, or add such a node"
            )
        return sum(fits), gpus

    def _start_workers(self, n: int, gpus: int) -> list[Any]:
        import ray

        cls = ray.remote(BatchWorker).options(num_cpus=self.cpus, num_gpus=gpus, max_concurrency=2, max_restarts=0)
        return [cls.remote(self.entries, str(self.batch_dir), self.cpus) for _ in range(n)]

    def _check_workers(self, workers: list[Any]) -> None:
        import ray

        name, token = f".sds3d-probe-{uuid.uuid4().hex}", uuid.uuid4().hex
        probe = self.batch_dir / name
        probe.write_text(token)
        try:
            refs = [w.check.remote(name, token) for w in workers]
            ready, pending = ray.wait(refs, num_returns=len(refs), timeout=START_TIMEOUT_S)
            if pending:
                raise SDS3DError(f"{len(pending)} of {len(refs)} Ray workers did not start within {START_TIMEOUT_S:.0f} s; check the cluster (ray status)")
            for problem in ray.get(ready):
                if problem:
                    raise SDS3DError(problem)
        finally:
            probe.unlink(missing_ok=True)

    # ------------------------------------------------------------------ the loop

    def run(self, todo: Sequence[BatchEntry], record: Callable[[dict[str, Any]], None]) -> None:
        import ray

        started = self._connect()
        try:
            n, gpus = self._worker_count()
            workers = self._start_workers(min(n, len(todo)), gpus)
            self._check_workers(workers)
            print(f"ray: {len(workers)} worker(s), {self.cpus} CPU(s) and {gpus} GPU(s) each, {len(todo)} prompt(s)")
            self._loop(workers, todo, record, gpus)
        finally:
            if started:
                ray.shutdown()

    def _loop(self, workers: list[Any], todo: Sequence[BatchEntry], record: Callable[[dict[str, Any]], None], gpus: int) -> None:
        import ray
        from ray.exceptions import RayError, RayTaskError

        from sds3d.train import RunInterrupted

        queue = deque((e, 0) for e in todo)
        idle = list(range(len(workers)))
        running: dict[Any, tuple[BatchEntry, int, int]] = {}  # ref -> (entry, attempt, worker slot)
        progress = Progress(len(todo), len(workers))
        try:
            while queue or running:
                while idle and queue:
                    (entry, attempt), slot = queue.popleft(), idle.pop()
                    running[workers[slot].run.remote(entry)] = (entry, attempt, slot)
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in ready:
                    entry, attempt, slot = running.pop(ref)
                    try:
                        rec = ray.get(ref)
                    except RayTaskError as e:  # outside run_entry's own handling (e.g. unpicklable result)
                        rec = _driver_record(entry, "failed", one_line(e), attempt)
                    except RayError as e:  # the worker process or its node died
                        workers[slot] = self._start_workers(1, gpus)[0]
                        if attempt < self.retries:
                            print(f"  worker died running {entry.prompt!r} ({type(e).__name__}); running it again, from its checkpoint")
                            queue.appendleft((entry, attempt + 1))
                            idle.append(slot)
                            continue
                        rec = _driver_record(entry, "failed", f"its worker died {attempt + 1} time(s) ({type(e).__name__})", attempt)
                    rec["attempts"] = attempt + 1
                    record(rec)
                    progress.finished(rec, running=len(running), queued=len(queue))
                    idle.append(slot)
        except KeyboardInterrupt:
            print(f"\nsds3d: interrupted: asking {len(running)} running prompt(s) to checkpoint and stop (Ctrl-C again to stop at once)")
            self._stop(workers, running, record)
            raise RunInterrupted("batch interrupted; rerun the same command to resume") from None

    def _stop(self, workers: list[Any], running: dict[Any, tuple[BatchEntry, int, int]], record: Callable[[dict[str, Any]], None]) -> None:
        import ray

        for w in workers:
            try:
                w.stop.remote()
            except Exception:  # noqa: BLE001 - a dead worker has nothing to stop
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            while running and time.monotonic() < deadline:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for ref in ready:
                    entry, attempt, _slot = running.pop(ref)
                    try:
                        rec = ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - died while stopping: its last checkpoint stays
                        rec = _driver_record(entry, "interrupted", f"interrupted ({type(e).__name__})", attempt)
                    rec["attempts"] = attempt + 1
                    record(rec)
        except KeyboardInterrupt:
            pass
        for entry, attempt, _slot in running.values():
            record(_driver_record(entry, "interrupted", "interrupted before its checkpoint was written; resumes from the previous one", attempt))


def _driver_record(entry: BatchEntry, status: str, error: str, attempt: int) -> dict[str, Any]:
    return entry.record(status=status, error=error, seconds=None, attempts=attempt + 1)


class Progress:
    """One line per finished prompt: counts and an ETA from the mean time of those done here."""

    def __init__(self, total: int, workers: int) -> None:
        self.total, self.workers = total, max(workers, 1)
        self.done = self.failed = self.other = 0
        self.t0 = time.perf_counter()

    def finished(self, rec: dict[str, Any], running: int, queued: int) -> None:
        status = rec["status"]
        self.done += status == "done"
        self.failed += status == "failed"
        self.other += status not in ("done", "failed")
        ended = self.done + self.failed + self.other
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / ended * (running + queued) if ended else float("nan")
        note = f": {rec['error']}" if status == "failed" else ""
        print(
            f"[{self.done} done | {running} running | {self.failed} failed | {queued} queued] "
            f"ETA {_clock(eta)}  {status}: {rec['prompt']}{note}",
            flush=True,
        )


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"
