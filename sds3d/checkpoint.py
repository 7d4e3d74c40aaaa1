"""Checkpoints and small files written atomically (temp file + rename in the same folder).

A crash, a full disk or a kill during a write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
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
    """The checkpoint at ``path``; a missing one is an error that ends with ``if_missing`` (what to do)."""
    if not Path(path).exists():
        raise SDS3DError(f"no checkpoint at {path}: the run never reached its first checkpoint; {if_missing}")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a broken file
        raise SDS3DError(f"cannot read checkpoint {path}: {e}; the file is damaged") from None


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, default=str).encode()
    atomic_write(path, lambda f: f.write(text))
