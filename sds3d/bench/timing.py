"""Measuring tools of ``sds3d bench speed``: phase timer, prior instrumentation, UNet-call
replay, FLOP count and matmul rate.

- :class:`PhaseTimer` adds wall time per named phase; on CUDA every phase edge synchronises
  the device, and with ``enabled`` off a phase costs nothing.
- :func:`instrument` shadows the prior's ``encode_images`` ("vae") and ``unet_forward`` /
  ``predict_noise`` ("unet") with timed versions that can also record each UNet call's inputs;
  :func:`replay_seconds` replays the recorded calls alone (the step's UNet floor).
- :func:`count_flops`: torch's flop formulas (matmul, convolution, attention; forward and
  backward; custom CUDA kernels count 0). :func:`matmul_tflops`: the best rate of a large square
  matmul, the divisor that turns FLOPs into the FLOP-floor time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


class PhaseTimer:
    """Adds wall time per phase name; with ``enabled`` off, phases cost nothing (no syncs)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.enabled = False
        self.times: dict[str, float] = {}
        self.calls: list[tuple[Callable[..., Any], tuple, dict]] | None = None  # UNet calls, when recording

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self.sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


def _detached(values: Any) -> Any:
    if torch.is_tensor(values):
        return values.detach().clone()
    if isinstance(values, (tuple, list)):
        return type(values)(_detached(v) for v in values)
    if isinstance(values, dict):
        return {k: _detached(v) for k, v in values.items()}
    return values


def instrument(prior: Any, timer: PhaseTimer) -> Callable[[], None]:
    """Time ``encode_images`` as "vae" and ``unet_forward`` (else ``predict_noise``) as "unet"
    (instance attributes shadowing the methods) on the prior, or on the Stable Diffusion prior
    it wraps (``prior.sd``, as MVDream's does); returns the function that undoes it."""
    prior = getattr(prior, "sd", prior)
    names = ["encode_images", "unet_forward" if hasattr(prior, "unet_forward") else "predict_noise"]
    encode, unet = (getattr(prior, n) for n in names)

    def timed_encode(*args: Any, **kwargs: Any) -> Any:
        with timer.phase("vae"):
            return encode(*args, **kwargs)

    def timed_unet(*args: Any, **kwargs: Any) -> Any:
        if timer.calls is not None:
            timer.calls.append((unet, _detached(args), _detached(kwargs)))
        with timer.phase("unet"):
            return unet(*args, **kwargs)

    setattr(prior, names[0], timed_encode)
    setattr(prior, names[1], timed_unet)

    def undo() -> None:
        for n in names:
            delattr(prior, n)

    return undo


def matmul_tflops(device: torch.device, dtype: torch.dtype, reps: int = 5) -> float:
    """Best measured rate (TFLOP/s) of an n x n matmul: n = 8192 on CUDA, 1024 on CPU."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    timer = PhaseTimer(device)
    best = float("inf")
    for i in range(reps + 2):
        timer.sync()
        t0 = time.perf_counter()
        a @ b
        timer.sync()
        if i >= 2:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


class _NoModuleTracking:
    """Stands in for FlopCounterMode's ModuleTracker, whose backward hooks break
    ``torch.autograd.grad`` inside a forward (NeRF's analytic normals); only the total is used."""

    parents = {"Global"}

    def __enter__(self) -> "_NoModuleTracking":
        return self

    def __exit__(self, *args: Any) -> None:
        return None


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` by torch's flop formulas (matmul, conv, attention; forward and backward)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracking()  # type: ignore[assignment]
    with counter:
        fn()
    return counter.get_total_flops()


def replay_seconds(calls: list[tuple[Callable[..., Any], tuple, dict]], timer: PhaseTimer) -> float:
    timer.sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        for fn, args, kwargs in calls:
            fn(*args, **kwargs)
    timer.sync()
    return time.perf_counter() - t0
