"""``sds3d bench exemplar --rescore OLD/results.json``: score finished runs again, without training.

When the scoring changes (a new ``--eval-resolution``, more ``--eval-views``, other Janus
elevations), earlier benchmark runs need not be trained again: every record of a results.json
names its run folder, and a run folder holds the final scene (``checkpoint.pt``, read with
``torch.load(weights_only=True)``), its configuration (``config.json``) and its export's numbers
(``summary.json``, the mesh files). A rescore takes the objects, methods, scenes, seeds and
steps of the earlier run, loads each scene and scores it with the present settings; the
ceilings are trained again from the runs' own configuration (or taken with ``--references``).
At the earlier run's settings a rescore gives the earlier numbers (``tests/test_bench_rescore.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sds3d.config import RunConfig
from sds3d.types import SDS3DError

if TYPE_CHECKING:
    from sds3d.train import RunResult


@dataclass(frozen=True)
class Rescore:
    """The runs of an earlier results.json: its config block and records."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]

    def prompts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r["prompt"] for r in self.records))

    def record(self, prompt: str, guidance: str, scene: str, seed: int) -> dict[str, Any]:
        for r in self.records:
            if (r["prompt"], r["guidance"], r["scene"], r["seed"]) == (prompt, guidance, scene, seed):
                return r
        raise SDS3DError(f"--rescore {self.path}: no run of {prompt!r} with {guidance}, {scene}, seed {seed}; rescore a complete results.json")

    def run_config(self, guidance: str, scene: str, seed: int) -> RunConfig:
        """The saved configuration of this (guidance, scene, seed)'s first run."""
        from sds3d.recipes import load_config

        for r in self.records:
            if (r["guidance"], r["scene"], r["seed"]) == (guidance, scene, seed):
                return load_config(Path(r["run_dir"]) / "config.json")[1]
        raise SDS3DError(f"--rescore {self.path}: no run with {guidance}, {scene}, seed {seed}")


def load_rescore(path: Path) -> Rescore:
    """The earlier results.json, as data; SDS3DError when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
        config, records = data["config"], data["records"]
        for r in records:
            for k in ("prompt", "guidance", "scene", "seed", "run_dir"):
                r[k]  # noqa: B018 (presence check)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SDS3DError(f"--rescore {path}: not a results.json of this benchmark ({exc}); give OUTPUT_DIR/results.json of an earlier run") from None
    if not records:
        raise SDS3DError(f"--rescore {path}: it has no runs to score")
    return Rescore(Path(path), config, records)


def load_run(record: dict[str, Any], device: torch.device) -> RunResult:
    """The scene, summary and wall time of an earlier record's run folder."""
    from sds3d.recipes import load_config
    from sds3d.factory import load_scene
    from sds3d.train import RunResult

    run_dir = Path(record["run_dir"])
    _, cfg = load_config(run_dir / "config.json")
    scene = load_scene(run_dir, cfg, device, if_missing="the run folder lost its scene; train it again without --rescore")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    return RunResult(run_dir, scene, float(record.get("seconds") or 0.0), summary)
