"""The run's clock: where a step stands in the run, for every scheduled quantity.

One convention for the whole house (scenes' regularizer weights, guidance timesteps and
clipping, the training background):

    f(step) = clamp(step / (fraction * max_steps), 0, 1)       :func:`progress`

so ``step`` 0 is the start (f = 0) and ``f`` reaches 1 at step ``fraction * max_steps``; with
``fraction = 1`` the last step, ``max_steps - 1``, has ``f = 1 - 1/max_steps``. A scene
regularizer weight that moves "linearly from start to end over the run" is
``a + (b - a) clamp(step / (max_steps - 1), 0, 1)`` (:func:`lerp`: exactly ``b`` on the last
step), and
a switch "after a fraction of the run" is on from ``step >= fraction * max_steps``
(:func:`reached`).
"""

from __future__ import annotations


def progress(step: int, max_steps: int, fraction: float = 1.0) -> float:
    """``clamp(step / (fraction * max_steps), 0, 1)`` (1 from the first step when the span is 0)."""
    return min(max(step / max(fraction * max_steps, 1e-9), 0.0), 1.0)


def lerp(start_end: tuple[float, float], step: int, max_steps: int) -> float:
    """``a + (b - a) clamp(step / (max_steps - 1), 0, 1)`` for ``start_end = (a, b)``: ``a`` at
    the first step and exactly ``b`` at the last one, ``max_steps - 1``, of the run."""
    a, b = start_end
    return a + (b - a) * progress(step, max(max_steps - 1, 1))


def reached(step: int, max_steps: int, fraction: float) -> bool:
    """Whether ``step`` is at or past ``fraction`` of the run: ``step >= fraction * max_steps``."""
    return step >= fraction * max_steps
