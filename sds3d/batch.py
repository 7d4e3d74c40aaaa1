"""``sds3d batch``: many prompts, one folder, resumable, shardable.

Prompt files: one prompt a line; ``#`` comments and blank lines are skipped; surrounding
whitespace is stripped; duplicate lines run once. A line may override options after a ``|``:
``a corgi | seed=3 steps=2000 guidance=vsd sds.guidance_scale=50`` (any RunConfig field,
dotted for nested ones, ``-`` or ``_``).

The batch folder holds one run folder per prompt (``NNNN-<slug>``, stable across reruns and
shards), ``manifest.jsonl`` (one record per finished attempt: prompt, run folder, status
done/failed/interrupted, error, seconds; appended under a file lock so shards can share it;
the newest record per prompt wins) and ``index.html`` (every prompt from the start, rewritten
under the same lock after each one, so the last shard to write it has seen every record).
Rerunning the same command skips prompts whose run is done and resumes interrupted ones from
their checkpoints.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from sds3d.config import RunConfig
from sds3d.factory import build_prompts, load_priors, precompute_prompts
from sds3d.gallery import write_gallery
from sds3d.prompts import read_prompt_file
from sds3d.types import SDS3DError

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class BatchEntry:
    index: int  # position in the de-duplicated list of all files (stable across shards)
    prompt: str
    overrides: tuple[tuple[str, str], ...]
    cfg: RunConfig

    @property
    def key(self) -> str:
        return self.prompt + "".join(f" {k}={v}" for k, v in self.overrides)

    def run_name(self) -> str:
        from sds3d.train import slugify

        return f"{self.index:04d}-{slugify(self.prompt, 40)}"


def parse_line(line: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``'a corgi | seed=3 steps=2000'`` -> ``('a corgi', (('seed','3'), ('steps','2000')))``."""
    prompt, sep, rest = line.partition("|")
    overrides = []
    if sep:
        for item in rest.split():
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise SDS3DError(f"bad override {item!r} in line {line!r}: write key=value, e.g. seed=3")
            overrides.append((key.replace("-", "_"), value))
    return prompt.strip(), tuple(overrides)


def apply_overrides(cfg: Any, overrides: tuple[tuple[str, str], ...]) -> Any:
    for key, value in overrides:
        cfg = _set(cfg, key.split("."), value, key)
    return cfg


def _set(obj: Any, path: list[str], value: str, full: str) -> Any:
    names = {f.name for f in dataclasses.fields(obj)}
    if path[0] not in names:
        raise SDS3DError(f"unknown option {full!r} in a prompt line; use a RunConfig field such as seed, steps, guidance")
    hint = typing.get_type_hints(type(obj))[path[0]]
    current = getattr(obj, path[0])
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise SDS3DError(f"option {full!r}: {path[0]} has no sub-options")
        return dataclasses.replace(obj, **{path[0]: _set(current, path[1:], value, full)})
    return dataclasses.replace(obj, **{path[0]: _convert(value, hint, full)})


def _convert(value: str, hint: Any, full: str) -> Any:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if hint in (int, float, str, Path):
            return hint(value)
        if origin is typing.Literal:
            if value not in args:
                raise ValueError(f"choose from {', '.join(map(str, args))}")
            return value
        if origin is tuple:
            return tuple(_convert(v, args[0], full) for v in value.split(","))
        if type(None) in args:  # Optional[X]
            if value.lower() == "none":
                return None
            return _convert(value, next(a for a in args if a is not type(None)), full)
    except ValueError as e:
        raise SDS3DError(f"bad value for {full!r}: {value!r} ({e})") from None
    raise SDS3DError(f"option {full!r} cannot be set from a prompt line")


def read_entries(files: tuple[Path, ...], base: RunConfig) -> list[BatchEntry]:
    """All prompts of all files, duplicates dropped, configs built and validated."""
    if not files:
        raise SDS3DError("no prompt file given: sds3d batch prompts/FILE.txt")
    entries: list[BatchEntry] = []
    seen: set[str] = set()
    for f in files:
        for line in read_prompt_file(f):
            prompt, overrides = parse_line(line)
            if not prompt:
                raise SDS3DError(f"empty prompt in line {line!r} of {f}")
            cfg = apply_overrides(base, overrides)
            entry = BatchEntry(len(entries), prompt, overrides, cfg)
            if entry.key in seen:
                continue
            seen.add(entry.key)
            cfg.validate()
            build_prompts(prompt, cfg)
            entries.append(entry)
    if not entries:
        raise SDS3DError(f"no prompts in {', '.join(map(str, files))}: write one prompt a line")
    return entries


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


def append_manifest(batch_dir: Path, record: dict[str, Any] | None, entries: list[BatchEntry] | None = None) -> None:
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
        out[rec["index"]] = rec
    return out


def run_status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, json.JSONDecodeError):
        return None


def run_batch(cmd: Any) -> int:
    """Run a :class:`sds3d.cli.Batch` command; exit code 1 if any prompt failed."""
    from sds3d.train import RunInterrupted, generate

    base = cmd.run
    if cmd.shard is None and "LOCAL_RANK" in os.environ and base.device == "auto":
        base = dataclasses.replace(base, device=f"cuda:{int(os.environ['LOCAL_RANK'])}")
    entries = read_entries(cmd.files, base)
    shard_i, shard_n = parse_shard(cmd.shard)
    mine = entries[shard_i::shard_n]
    batch_dir = cmd.batch_dir or base.output_dir / f"batch-{Path(cmd.files[0]).stem}"
    try:
        batch_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SDS3DError(f"cannot create batch folder {batch_dir}: {e.strerror}; pass a writable --batch-dir") from None

    append_manifest(batch_dir, None, entries)  # the gallery shows every prompt from the start
    priors_cache: dict[tuple[str, str | None, str, str], Any] = {}
    failed = 0
    for n, entry in enumerate(mine, 1):
        run_dir = batch_dir / entry.run_name()
        status = run_status(run_dir)
        if status == "done":
            print(f"[{n}/{len(mine)}] skip (done): {entry.prompt}")
            continue
        print(f"[{n}/{len(mine)}] {entry.prompt}")
        cfg = entry.cfg
        key = (cfg.prior, cfg.mv_prior, cfg.guidance, cfg.device)
        t0 = time.perf_counter()
        record: dict[str, Any] = {"index": entry.index, "prompt": entry.prompt, "overrides": dict(entry.overrides), "run_dir": run_dir.name}
        try:
            if key not in priors_cache:
                device = cfg.resolve_device()
                priors_cache[key] = load_priors(cfg, device)
                precompute_prompts(priors_cache[key], [build_prompts(e.prompt, e.cfg) for e in mine if e.cfg.prior == cfg.prior])
            run_dir.mkdir(exist_ok=True)
            resume = (run_dir / "checkpoint.pt").exists()
            result = generate(entry.prompt, cfg, run_dir=run_dir, resume=resume, priors=priors_cache[key])
            record.update(status="done", error=None, seconds=result.seconds)
        except (RunInterrupted, KeyboardInterrupt) as e:
            record.update(status="interrupted", error=str(e) or "interrupted", seconds=time.perf_counter() - t0)
            append_manifest(batch_dir, record, entries)
            raise
        except Exception as e:  # noqa: BLE001 - one prompt's failure must not stop the batch
            failed += 1
            msg = str(e) if isinstance(e, SDS3DError) else f"{type(e).__name__}: {e}"
            print(f"  failed: {msg}")
            record.update(status="failed", error=msg, seconds=time.perf_counter() - t0)
        append_manifest(batch_dir, record, entries)
    append_manifest(batch_dir, None, entries)
    print(f"batch folder: {batch_dir} ({failed} failed)")
    return 1 if failed else 0
