"""Checkpoints and small files written atomically (temp file + rename in the same folder).

A crash, a full disk or a kill during a write leaves the previous file intact.

A checkpoint holds data only: tensors and plain values (numbers, strings, lists, tuples, dicts).
It is read with ``torch.load(weights_only=True)``, which refuses anything that would run code,
so a run folder from elsewhere cannot execute anything on ``--resume`` or ``sds3d export``.
Checkpoints written before this rule kept numpy's random state as an array; the safe loader
accepts exactly numpy's array reconstruction for those. Every problem is one line that names
the file: code in it, a damaged file, a missing entry, or a tensor whose shape the run's config
does not make.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from sds3d.types import SDS3DError


def atomic_write(path: Path, write: Any) -> None:
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise SDS3DError(
            f"cannot write {path}: {e.strerror or e}; free disk space or pick a writable --output-dir "
            "(earlier checkpoints are untouched)"
        ) from None
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, device: torch.device | str = "cpu", if_missing: str = "start it again without --resume") -> dict[str, Any]:
    """The checkpoint at ``path``, read without running code; a missing one is an error that ends
    with ``if_missing`` (what to do)."""
    if not Path(path).exists():
        raise SDS3DError(f"no checkpoint at {path}: the run never reached its first checkpoint; {if_missing}")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = found.group(1) if found else "objects that are not tensors or plain values"
        raise SDS3DError(
            f"refusing to load checkpoint {path}: it asks to run {what}, and a sds3d checkpoint holds only "
            "tensors and plain values; do not use this file (nothing in it was run)"
        ) from None
    except Exception as e:  # noqa: BLE001 - any other failure means a broken file
        raise SDS3DError(f"cannot read checkpoint {path}: {_first_line(e)}; the file is damaged") from None
    if not isinstance(state, dict):
        raise SDS3DError(f"checkpoint {path} is not a sds3d checkpoint (a {type(state).__name__}, not a dict of entries)")
    return state


def _legacy_numpy_globals() -> list[Any]:
    """numpy's array reconstruction, for the numpy random state of checkpoints written before
    states were stored as tensors (an array of numbers: data, not code)."""
    import numpy as np

    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def require_entries(state: dict[str, Any], path: Path, entries: dict[str, type | tuple[type, ...]]) -> None:
    """Fail with one line if ``state`` lacks an entry or holds one of another type."""
    for key, kind in entries.items():
        if key not in state:
            raise SDS3DError(f"checkpoint {path} has no {key!r} entry: it is incomplete or not written by sds3d generate; start the run again")
        if not isinstance(state[key], kind):
            raise SDS3DError(f"checkpoint {path}: {key!r} is a {type(state[key]).__name__}, not what sds3d writes; the file is damaged")


def check_like(saved: Any, fresh: Any, path: Path, where: str) -> None:
    """``saved`` has the structure of ``fresh`` (the state of an object built from the run's
    config): the same dict keys, and tensors with the same number of dimensions and the same
    sizes after the first (the first may grow: the number of Gaussians). Optimizer states are
    left to the optimizer's own loader."""
    if isinstance(fresh, dict):
        if not isinstance(saved, dict):
            raise SDS3DError(f"checkpoint {path}: {where} is a {type(saved).__name__} where this run's config makes a dict; resume or export with the run's own config.json")
        if where.rsplit(".", 1)[-1] in ("optimizers", "optimizer", "state"):
            return
        missing, extra = sorted(set(map(str, fresh)) - set(map(str, saved))), sorted(set(map(str, saved)) - set(map(str, fresh)))
        if missing or extra:
            raise SDS3DError(
                f"checkpoint {path}: {where} has entries {extra or '-'} and lacks {missing or '-'} for this run's config; "
                "resume or export with the run's own config.json"
            )
        for key, value in fresh.items():
            check_like(saved[key], value, path, f"{where}.{key}")
    elif torch.is_tensor(fresh):
        if not torch.is_tensor(saved):
            raise SDS3DError(f"checkpoint {path}: {where} is a {type(saved).__name__}, not a tensor; the file is damaged")
        if saved.dim() != fresh.dim() or saved.shape[1:] != fresh.shape[1:]:
            raise SDS3DError(
                f"checkpoint {path}: {where} has shape {tuple(saved.shape)} where this run's config makes {tuple(fresh.shape)}; "
                "resume or export with the run's own config.json"
            )


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str).encode()
    atomic_write(path, lambda f: f.write(text))


def load_into(obj: Any, saved: Any, path: Path, where: str) -> None:
    """``obj.load_state_dict(saved)`` after :func:`check_like`; any mismatch is one line."""
    check_like(saved, obj.state_dict(), path, where)
    try:
        obj.load_state_dict(saved)
    except SDS3DError:
        raise
    except Exception as e:  # noqa: BLE001 - a state that does not fit, whatever the loader raises
        raise SDS3DError(f"checkpoint {path}: {where} does not fit this run ({_first_line(e)}); resume or export with the run's own config.json") from None


def _first_line(e: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
