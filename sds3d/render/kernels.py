"""Loading gsplat's and nerfacc's CUDA kernels, once per process, without ever killing a run.

Both libraries compile their kernels on first use (``torch.utils.cpp_extension``), which needs
a CUDA toolkit (``nvcc``, ``CUDA_HOME``) that a pip-installed CUDA torch does not bring. When a
prebuilt module is missing and the build fails, or the built module cannot be imported, the
library raises a long build log (or leaves ``_C = None`` and fails later with an
``AttributeError``). Here that becomes one line:

    kernel_problem("gsplat") -> None                      # kernels loaded
    kernel_problem("gsplat") -> "gsplat's CUDA kernels ... : <what failed>; <how to get them>"

``backend="auto"`` callers print the line once (:func:`warn_fallback`) and use the pure-torch
path on CUDA; an explicit kernel backend raises it as an :class:`SDS3DError`. The result is
cached, so a failed build is not retried at every render.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import shutil
import sys
from typing import Literal

from sds3d.types import SDS3DError

KernelLib = Literal["gsplat", "nerfacc"]

KERNEL_ADVICE = {
    "gsplat": "install the CUDA toolkit matching your torch (nvcc on PATH or CUDA_HOME set) and run again, or a "
    "prebuilt gsplat wheel for your torch/CUDA (pip install gsplat --index-url https://docs.gsplat.studio/whl/ptXXcuYYY, "
    "e.g. pt24cu124)",
    "nerfacc": "install the CUDA toolkit matching your torch (nvcc on PATH or CUDA_HOME set) and run again, or a "
    "prebuilt nerfacc wheel for your torch/CUDA (pip install nerfacc -f "
    "https://nerfacc-bucket.s3.us-west-2.amazonaws.com/whl/torch-X.Y.0_cuZZZ.html)",
}
"""How to get each library's kernels (its README's install section)."""
FALLBACK_NOTE = {"gsplat": "Gaussians use the pure-torch rasterizer", "nerfacc": "NeRF uses the dense torch sampler"}
_warned: set[str] = set()


def load_backend(lib: KernelLib) -> object:
    """Import ``<lib>.cuda._backend`` (building the kernels if needed) and return its ``_C``.

    Without a toolkit the libraries' own "disabled" console line is swallowed (the failure
    comes back as the exception); with one, their build progress stays visible, since a first
    build takes minutes. Tests replace this function to simulate a machine without a toolkit.
    """
    from torch.utils.cpp_extension import CUDA_HOME

    quiet = CUDA_HOME is None and shutil.which("nvcc") is None
    with contextlib.ExitStack() as stack:
        if quiet:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        module = importlib.import_module(f"{lib}.cuda._backend")
    c = getattr(module, "_C", None)
    if c is None:
        raise RuntimeError("no CUDA toolkit (nvcc) found to build them and no prebuilt module installed")
    return c


@functools.cache
def kernel_problem(lib: KernelLib) -> str | None:
    """None when ``lib``'s CUDA kernels load, else one line: what failed and how to get them."""
    try:
        load_backend(lib)
    except Exception as e:  # noqa: BLE001 - any build/import failure becomes the one line
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        reason = f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__
        return f"{lib}'s CUDA kernels could not be built or loaded ({reason}); to get them {KERNEL_ADVICE[lib]}"
    return None


def require_kernels(lib: KernelLib, option: str) -> None:
    """Raise the one-line :class:`SDS3DError` when an explicitly chosen kernel backend cannot load."""
    problem = kernel_problem(lib)
    if problem is not None:
        raise SDS3DError(f"{option}: {problem}; or use the pure-torch path (backend auto or torch)")


def kernels_or_fallback(lib: KernelLib) -> bool:
    """True when the kernels load; otherwise print the one warning line (once per process)."""
    problem = kernel_problem(lib)
    if problem is None:
        return True
    warn_fallback(lib, problem)
    return False


def warn_fallback(lib: KernelLib, problem: str) -> None:
    if lib not in _warned:
        _warned.add(lib)
        print(f"sds3d: warning: {problem}; {FALLBACK_NOTE[lib]} on CUDA (slower)", file=sys.stderr)


def reset() -> None:
    """Forget cached results and printed warnings (tests)."""
    kernel_problem.cache_clear()
    _warned.clear()
