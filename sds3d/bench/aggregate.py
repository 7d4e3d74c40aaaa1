"""Summaries of the exemplar benchmark's records: mean, worst decile and per-family means.

For each (guidance, scene) and each column ``k`` of :data:`COLUMNS` (values ``v_i`` over the
runs where it is finite, ``n`` of them):

* ``mean = sum(v_i) / n``;
* ``worst_decile`` = mean of the ``max(1, ceil(n / 10))`` worst values, worst meaning lowest
  for the columns where higher is better and highest for :data:`LOWER_IS_BETTER` (Chamfer,
  Janus, whose positive values mean a second face at the back);
* ``families[f]`` = mean over the runs whose object belongs to family ``f`` (records without a
  ``family``, built-in objects, fall in ``"-"``).
"""

from __future__ import annotations

import math
from typing import Any

COLUMNS = ("normalized", "psnr", "mask_iou", "janus", "chamfer", "mesh_psnr_object", "mesh_iou")
"""Columns summarised."""
LOWER_IS_BETTER = frozenset({"chamfer", "janus"})
"""Columns whose worst values are the highest."""


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def worst_decile(values: list[Any], lower_is_better: bool = False) -> float | None:
    """Mean of the worst 10% of the finite values (at least one); None when there are none."""
    vals = sorted(_finite(values), reverse=lower_is_better)
    if not vals:
        return None
    k = max(1, math.ceil(len(vals) / 10))
    return sum(vals[:k]) / k


def _mean(values: list[Any]) -> float | None:
    vals = _finite(values)
    return sum(vals) / len(vals) if vals else None


def summaries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (guidance, scene): runs, and per column mean / worst_decile / families."""
    out = []
    for g, s in dict.fromkeys((r["guidance"], r["scene"]) for r in records):
        rows = [r for r in records if r["guidance"] == g and r["scene"] == s]
        families = list(dict.fromkeys(r.get("family") or "-" for r in rows))
        cols = {}
        for k in COLUMNS:
            vals = [r.get(k) for r in rows]
            fam = {f: _mean([r.get(k) for r in rows if (r.get("family") or "-") == f]) for f in families}
            cols[k] = {"mean": _mean(vals), "worst_decile": worst_decile(vals, k in LOWER_IS_BETTER), "families": fam}
        out.append({"guidance": g, "scene": s, "runs": len(rows), "columns": cols})
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def summary_table(summary: list[dict[str, Any]]) -> str:
    """Markdown: one row per (guidance, scene, statistic), statistics mean, worst decile, then
    each family's mean; one column per :data:`COLUMNS`."""
    lines = ["| guidance | scene | statistic | " + " | ".join(COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]  # fmt: skip
    for s in summary:
        cols = s["columns"]
        stats = [("mean", lambda c: c["mean"]), ("worst decile", lambda c: c["worst_decile"])]
        stats += [(f"family {f}", lambda c, f=f: c["families"][f]) for f in cols[COLUMNS[0]]["families"]]
        for name, get in stats:
            cells = [s["guidance"], s["scene"], name] + [_fmt(get(cols[k])) for k in COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
