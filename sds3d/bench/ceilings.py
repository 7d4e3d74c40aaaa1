"""The exemplar benchmark's ceilings: direct supervised reconstruction, and their reuse.

The *ceiling* of an object and scene type is the scene trained by L2 on the object's library
images with their known cameras (same step budget, batch and seed as the guided runs), scored
on the benchmark's held-out cameras. On 2 CPU cores the ceilings take about a third of a
28-object test-split run, and they do not change with anything a guidance experiment varies
(the guidance method and its options, the background schedule, the export), so
``--references results.json`` takes them from an earlier run instead of training them again.

A ceiling is reused only when its *key* (:func:`ceiling_key`) equals the key the present run
would train it with: the library, the scene type and its options, steps, batch size, the
first seed, render resolutions, cameras, the library images' resolution and count, and the
scoring (evaluation views, their pixel size, the Janus elevations). Anything else is refused
with a one-line error that names the fields that differ. The file is read as JSON data only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sds3d.config import RunConfig
from sds3d.types import SDS3DError


def supervised_ceiling(truth_prior: Any, prompt: str, run: RunConfig, device: torch.device) -> Any:
    """The scene type trained by L2 on the object's library images with their known cameras."""
    from sds3d.factory import build_scene
    from sds3d.priors.exemplar_library import library_cameras
    from sds3d.train import seed_everything

    obj = truth_prior.prompts.index(truth_prior.truth(prompt).prompt)
    G, R = truth_prior.cfg.num_groups, truth_prior.cfg.resolution
    images = truth_prior.images[truth_prior.object_id == obj].reshape(-1, 3, R, R)
    targets = ((images + 1.0) / 2.0).permute(0, 2, 3, 1).to(device)  # [4G,R,R,3] in [0,1]
    cams = library_cameras(G, R, truth_prior.camera_cfg)
    seed_everything(run.seed)
    scene = build_scene(run, device)
    gen = torch.Generator().manual_seed(run.seed)
    for step in range(run.steps):
        idx = torch.randperm(len(targets), generator=gen)[: run.batch_size]
        sub = cams[idx].to(device)
        out = scene.render(sub, torch.ones(len(idx), 3, device=device))
        scene.pre_backward(step, out)
        loss = F.mse_loss(out.rgb, targets[idx.to(device)])
        loss.backward()
        scene.optimizer_step(step, out)
    return scene


def _plain(value: Any) -> Any:
    """A dataclass or value as JSON data (paths and other objects as strings)."""
    data = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return json.loads(json.dumps(data, default=str))


def ceiling_key(
    prior: str, run: RunConfig, eval_views: int, eval_resolution: int, janus_elevations: tuple[float, ...]
) -> dict[str, Any]:
    """Everything a ceiling's score depends on, as JSON data (``run`` is the first seed's run)."""
    scene_options = run.gaussians if run.scene == "gaussians" else run.nerf
    return _plain({
        "prior": prior, "scene": run.scene, "scene_options": _plain(scene_options), "steps": run.steps,
        "batch_size": run.batch_size, "seed": run.seed, "resolutions": list(map(list, run.resolutions())),
        "cameras": _plain(run.cameras), "library_resolution": run.exemplar.resolution,
        "library_groups": run.exemplar.num_groups, "eval_views": eval_views, "eval_resolution": eval_resolution,
        "janus_elevations": list(janus_elevations),
    })  # fmt: skip


def _differing(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted names of the leaves where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differing(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def reused_references(path: Path, keys: dict[str, dict[str, Any]], prompts: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """The ceilings of ``path`` (an earlier results.json) for these prompts and scenes, keyed
    (prompt, scene); ``keys`` maps each scene to the present :func:`ceiling_key`. SDS3DError when
    the file is unreadable, lacks one, or was made with other settings."""
    try:
        saved = json.loads(Path(path).read_text())
        saved_keys, saved_refs = saved["ceiling_keys"], saved["references"]
        by_pair = {(r["prompt"], r["scene"]): r for r in saved_refs}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SDS3DError(f"--references {path}: not a results.json of this benchmark with ceiling keys ({exc}); drop --references to train the ceilings") from None
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for scene, key in keys.items():
        if scene not in saved_keys:
            raise SDS3DError(f"--references {path}: it has no {scene} ceilings; drop --references or add --scene {scene} to the earlier run")
        diff = _differing(saved_keys[scene], key)
        if diff:
            raise SDS3DError(f"--references {path}: its {scene} ceilings were made with other settings ({', '.join(diff[:6])}); match them or drop --references")
        for p in prompts:
            if (p, scene) not in by_pair:
                raise SDS3DError(f"--references {path}: no {scene} ceiling for {p!r}; drop --references or include that prompt in the earlier run")
            ref = by_pair[(p, scene)]
            out[(p, scene)] = {k: ref[k] for k in ("ceiling_psnr", "ceiling_mask_iou", "ceiling_janus", "ceiling_seconds")}
    return out
