"""``sds3d bench exemplar``: score guidance methods and scenes against known 3D truth, on a CPU.

For every library object x guidance method x scene x seed, train with :func:`sds3d.train.generate`
on the exemplar prior, then score on held-out cameras (the evaluation orbit, ``eval_views``
azimuths from the front at ``cameras.eval_elevation``; the library cameras are random, so
these are not among them), all renders at ``--eval-resolution`` (128 px) on white against the
ray-cast truth (Lambert headlight, as the library images):

* ``psnr``, ``mask_iou`` (:mod:`sds3d.bench.metrics`) of the scene renders vs the truth;
* ``janus``: :func:`sds3d.bench.metrics.janus_score` of back views (azimuth 180, elevations
  ``janus_elevations``) against the true front and back;
* ``chamfer``: of the exported mesh (``mesh.glb``/``mesh.obj``/``mesh.ply`` in the run folder)
  vs the true mesh, as a fraction of its bounding-box diagonal; null when no mesh was written;
* ``mesh_psnr_object`` (the headline: object pixels only), ``mesh_psnr`` (whole frame),
  ``mesh_iou``, ``mesh_pieces``, ``mesh_euler``: the export's mesh-vs-scene fidelity at 128 px
  and the mesh's connected pieces and Euler characteristic (``summary.json``);
* ``seconds``: wall time of the run (training and export).

References per object and scene: the *floor* is a blank render (the white background
alone, PSNR vs the truth); the *ceiling* is direct supervised reconstruction of the same
scene type from the object's library images with their known cameras (L2 loss, same step
budget, batch and seed; :mod:`sds3d.bench.ceilings`). ``normalized = (psnr - floor) / (ceiling - floor)``.
``--references OUTPUT_DIR/results.json`` of an earlier run reuses its ceilings when nothing they
depend on differs; ``--rescore OUTPUT_DIR/results.json`` scores its runs again from their run
folders, without training (:mod:`sds3d.bench.rescore`).

``--library procedural --split train|test`` runs a split of the procedural library
(:mod:`sds3d.priors.procedural`, the prior ``exemplar:procedural-<split>``); tune on ``train``,
report ``test``.

Writes ``OUTPUT_DIR/results.json`` (``records``, ``references``, ``ceiling_keys``, ``averages``, ``summary``: mean,
worst decile and per-family means of :mod:`sds3d.bench.aggregate`) and ``OUTPUT_DIR/results.md``,
and prints both tables; per (guidance, scene, seed) a contact sheet
``OUTPUT_DIR/contact-<guidance>-<scene>-seed<seed>.png`` (:mod:`sds3d.bench.contact_sheet`:
truth vs result from the front, side and back, one row per object with its name, family and
normalized score); run folders go to ``OUTPUT_DIR/runs``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from sds3d.bench.aggregate import summaries, summary_table
from sds3d.bench.ceilings import ceiling_key, reused_references, supervised_ceiling
from sds3d.bench.contact_sheet import SHEET_AZIMUTHS, SheetRow, contact_sheet
from sds3d.bench.rescore import load_rescore, load_run
from sds3d.bench.metrics import chamfer, janus_score, mask_iou, psnr
from sds3d.cameras import Cameras, eval_cameras, orbit_cameras
from sds3d.config import GuidanceName, RunConfig, SceneName, resolve_device
from sds3d.recipes import apply_overrides, exemplar_recipe, leaf_diff
from sds3d.types import SDS3DError, render_views

MESH_FILES = ("mesh.glb", "mesh.obj", "mesh.ply")


def bench_run(scene: SceneName = "gaussians") -> RunConfig:
    """The exemplar recipe of ``scene`` as the benchmark runs it: no previews or checkpoints, no
    turntable video or splat PLY, 8 mesh-fidelity views at 128 px (128^3 meshes)."""
    recipe = exemplar_recipe(scene=scene)
    return dataclasses.replace(
        recipe, preview_every=0, checkpoint_every=0, turntable_frames=4, turntable_resolution=64,
        export=dataclasses.replace(recipe.export, turntable=False, eval_views=8, eval_resolution=128, splat_ply=False),
    )  # fmt: skip


@dataclass(frozen=True)
class BenchConfig:
    """Exemplar quality benchmark: PSNR / mask IoU / Janus / Chamfer against the true meshes."""

    prior: str = "exemplar"
    """Library: 'exemplar' (built-in objects) or 'exemplar:DIR' (a folder of meshes)."""
    library: str = "builtin"
    """Objects: 'builtin' (those of --prior: the built-in objects, or exemplar:DIR) or 'procedural'
    (a split of the procedural library; give --split)."""
    split: str = ""
    """With --library procedural: 'train' (tune on it) or 'test' (report it); fixed seeds."""
    sheet_resolution: int = 128
    """Pixel size of each image of the contact sheets (0: no sheets)."""
    guidance: tuple[GuidanceName, ...] = ("sds",)
    """Guidance methods to compare."""
    scene: tuple[SceneName, ...] = ("gaussians",)
    """Scene types to compare."""
    steps: int = 200
    """Training steps per run (and for the supervised ceiling). The default keeps the default
    run (7 built-in objects, one method, one scene, one seed) within 15 minutes on 2 CPU cores."""
    seeds: tuple[int, ...] = (0,)
    """Random seeds; one run per seed."""
    prompts: tuple[str, ...] = ()
    """Library prompts to run (default: every object of the library)."""
    device: str = "auto"
    """Torch device: auto (cuda if present, else cpu), cpu, cuda, cuda:1 ..."""
    output_dir: Path = Path("outputs/bench-exemplar")
    """Where results.json, results.md and the run folders (runs/) go."""
    eval_views: int = 8
    """Held-out evaluation views (evenly spaced azimuths, front first)."""
    eval_resolution: int = 128
    """Pixel size of the held-out renders that PSNR, mask IoU and Janus are scored at (the scenes
    train on 64 px library images by default; results before 2026-12-07 were scored at 64 px)."""
    references: Path | None = None
    """An earlier results.json whose supervised ceilings to reuse (only when made with the same
    library, scene options, steps, first seed and scoring; see sds3d.bench.ceilings)."""
    rescore: Path | None = None
    """An earlier results.json whose runs to score again from their run folders, without training
    (its objects, methods, scenes, seeds and steps; see sds3d.bench.rescore)."""
    janus_elevations: tuple[float, ...] = (0.0, 15.0, 30.0)
    """Elevations of the back/front camera pairs of the Janus score."""
    run: RunConfig = bench_run()
    """Every other run option (learning rates, guidance scales, --run.exemplar.*, export ...). Each
    scene starts from its own exemplar recipe (``sds3d.recipes.exemplar_recipe``; the help shows
    the Gaussian one) without previews, turntables or splat PLY, with 8 mesh-fidelity views at
    128 px; an option set here applies to every scene."""


def resolve_library(cfg: BenchConfig) -> str:
    """The exemplar prior spec that --library / --split / --prior name (SDS3DError when they
    contradict each other)."""
    from sds3d.priors.procedural import SPLITS

    if cfg.library == "builtin":
        if cfg.split:
            raise SDS3DError(f"--split {cfg.split!r} needs --library procedural")
        return cfg.prior
    if cfg.library != "procedural":
        raise SDS3DError(f"--library {cfg.library!r}: use 'builtin' or 'procedural'")
    if cfg.split not in SPLITS:
        raise SDS3DError(f"--library procedural needs --split {' or '.join(SPLITS)} (got {cfg.split!r})")
    if cfg.prior != "exemplar":
        raise SDS3DError(f"--library procedural picks the prior itself; drop --prior {cfg.prior!r}")
    return f"exemplar:procedural-{cfg.split}"


def typed_run_options(cfg: BenchConfig, args: list[str]) -> dict[str, Any]:
    """The ``--run.*`` options set in ``args`` (the arguments after ``bench exemplar``), of which
    ``cfg`` is the parse: tyro fills unset options with the defaults it is given, so ``args`` is
    parsed once more with the NeRF recipe as the defaults, and an option is set where either
    parse differs from its defaults (as ``sds3d generate`` tells typed options from a recipe's)."""
    import tyro

    nerf = tyro.cli(BenchConfig, default=BenchConfig(run=bench_run("nerf")), args=args)
    return {**leaf_diff(cfg.run, bench_run()), **leaf_diff(nerf.run, bench_run("nerf"))}


def _run_config(cfg: BenchConfig, options: Mapping[str, Any], guidance: str, scene: SceneName, seed: int) -> RunConfig:
    return dataclasses.replace(
        apply_overrides(bench_run(scene), options), prior=cfg.prior, guidance=guidance, scene=scene, steps=cfg.steps, seed=seed,
        device=cfg.device, output_dir=cfg.output_dir / "runs",
    )  # fmt: skip


def _render(scene: Any, cams: Cameras, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Scene renders on white, evaluation mode: rgb [N,H,W,3], alpha [N,H,W,1] (CPU)."""
    out = render_views(scene, cams, device)
    return out.rgb.clamp(0, 1), out.alpha


class Scorer:
    """Truth renders of one object on the held-out cameras, and the scores of a scene."""

    def __init__(self, truth_prior: Any, prompt: str, cfg: BenchConfig, run: RunConfig) -> None:
        R = cfg.eval_resolution
        cc = run.cameras
        self.eval = eval_cameras(cc, cfg.eval_views, R, R)
        n = len(cfg.janus_elevations)
        self.back = orbit_cameras(list(cfg.janus_elevations), [180.0] * n, cc.eval_distance, cc.eval_fovy, R, R)
        front = orbit_cameras(list(cfg.janus_elevations), [0.0] * n, cc.eval_distance, cc.eval_fovy, R, R)
        self.mesh = truth_prior.truth(prompt).mesh
        self.rgb, self.alpha = truth_prior.render_truth(prompt, self.eval)
        self.true_back, _ = truth_prior.render_truth(prompt, self.back)
        self.true_front, _ = truth_prior.render_truth(prompt, front)
        self.floor = psnr(torch.ones_like(self.rgb), self.rgb)
        S, k = cfg.sheet_resolution, len(SHEET_AZIMUTHS)
        self.sheet = orbit_cameras([cc.eval_elevation] * k, list(SHEET_AZIMUTHS), cc.eval_distance, cc.eval_fovy, S, S) if S > 0 else None
        self.sheet_truth = truth_prior.render_truth(prompt, self.sheet)[0] if S > 0 else None

    def sheet_render(self, scene: Any, device: torch.device) -> torch.Tensor | None:
        """The scene from the contact sheet's views [V,S,S,3] (None without sheets)."""
        return None if self.sheet is None else _render(scene, self.sheet, device)[0]

    def score(self, scene: Any, device: torch.device) -> dict[str, float]:
        rgb, alpha = _render(scene, self.eval, device)
        back, _ = _render(scene, self.back, device)
        return {
            "psnr": psnr(rgb, self.rgb),
            "mask_iou": mask_iou(alpha, self.alpha),
            "janus": janus_score(back, self.true_front, self.true_back),
        }


def _mesh_chamfer(run_dir: Path, true_mesh: Any) -> float | None:
    from sds3d.export.writers import read_mesh

    for name in MESH_FILES:
        if (run_dir / name).exists():
            value = chamfer(read_mesh(run_dir / name), true_mesh)
            return value if math.isfinite(value) else None
    return None


def _mesh_fidelity(summary: dict[str, Any]) -> dict[str, float | None]:
    """Mesh-vs-scene PSNR (object pixels, whole frame), mask IoU, pieces and Euler characteristic
    of the run's export (null when not measured)."""
    mesh = summary.get("mesh") or {}
    fid = mesh.get("fidelity") or {}
    return {"mesh_psnr_object": fid.get("psnr_object"), "mesh_psnr": fid.get("psnr"), "mesh_iou": fid.get("mask_iou"),
            "mesh_pieces": mesh.get("pieces"), "mesh_euler": mesh.get("euler")}


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def _averages(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("psnr", "mask_iou", "chamfer", "janus", "normalized", "mesh_psnr_object", "mesh_psnr", "mesh_iou",
            "mesh_pieces", "mesh_euler", "seconds")
    out = []
    for g, s in dict.fromkeys((r["guidance"], r["scene"]) for r in records):
        rows = [r for r in records if r["guidance"] == g and r["scene"] == s]
        out.append({"guidance": g, "scene": s, "runs": len(rows), **{k: _mean([r[k] for r in rows]) for k in keys}})
    return out


def _fmt(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(result: dict[str, Any]) -> str:
    refs = {(r["prompt"], r["scene"]): r for r in result["references"]}
    lines = [
        "| prompt | guidance | scene | seed | PSNR | floor | ceiling | normalized | mask IoU | Janus | Chamfer "
        "| mesh obj. PSNR | mesh PSNR | mesh IoU | pieces | Euler | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["records"]:
        ref = refs[(r["prompt"], r["scene"])]
        cells = [r["prompt"], r["guidance"], r["scene"], r["seed"], _fmt(r["psnr"]), _fmt(ref["floor_psnr"]),
                 _fmt(ref["ceiling_psnr"]), _fmt(r["normalized"]), _fmt(r["mask_iou"]), _fmt(r["janus"]),
                 _fmt(r["chamfer"], 4), _fmt(r["mesh_psnr_object"]), _fmt(r["mesh_psnr"]), _fmt(r["mesh_iou"]),
                 _fmt(r["mesh_pieces"]), _fmt(r["mesh_euler"]), _fmt(r["seconds"], 0)]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for a in result["averages"]:
        cells = ["**average**", a["guidance"], a["scene"], f"{a['runs']} runs", _fmt(a["psnr"]), "", "",
                 _fmt(a["normalized"]), _fmt(a["mask_iou"]), _fmt(a["janus"]), _fmt(a["chamfer"], 4),
                 _fmt(a["mesh_psnr_object"]), _fmt(a["mesh_psnr"]), _fmt(a["mesh_iou"]), _fmt(a["mesh_pieces"]),
                 _fmt(a["mesh_euler"], 1), _fmt(a["seconds"], 0)]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def run_bench(cfg: BenchConfig, run_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run every (object, guidance, scene, seed), write results.json/results.md, print the table.

    ``run_options``: the run options set (dotted paths, :func:`typed_run_options`), applied on
    top of each scene's recipe; default: where ``cfg.run`` differs from the Gaussian recipe."""
    from sds3d.factory import load_priors
    from sds3d.priors.exemplar import load_exemplar
    from sds3d.train import generate

    if not (cfg.prior == "exemplar" or cfg.prior.startswith("exemplar:")):
        raise SDS3DError(f"--prior {cfg.prior!r}: the benchmark needs the exemplar prior, 'exemplar' or 'exemplar:DIR'")
    if cfg.steps <= 0 or not cfg.guidance or not cfg.scene or not cfg.seeds or cfg.eval_views <= 0 or cfg.eval_resolution <= 0:
        raise SDS3DError("give --steps > 0, --eval-views > 0, --eval-resolution > 0 and at least one --guidance, --scene and --seeds")
    old = load_rescore(cfg.rescore) if cfg.rescore is not None else None
    if old is None:
        cfg = dataclasses.replace(cfg, prior=resolve_library(cfg))
    else:  # the earlier run's objects, methods, scenes, seeds and steps
        c = old.config
        cfg = dataclasses.replace(cfg, prior=c["prior"], library=c.get("library", "builtin"), split=c.get("split", ""),
                                  guidance=tuple(c["guidance"]), scene=tuple(c["scene"]), seeds=tuple(c["seeds"]),
                                  steps=c["steps"], prompts=old.prompts())  # fmt: skip

    options = leaf_diff(cfg.run, bench_run()) if run_options is None else run_options

    def run_of(guidance: str, scene: SceneName, seed: int) -> RunConfig:
        return _run_config(cfg, options, guidance, scene, seed) if old is None else old.run_config(guidance, scene, seed)

    device = resolve_device(cfg.device)
    base = run_of(cfg.guidance[0], cfg.scene[0], cfg.seeds[0])
    truth_prior = load_exemplar(cfg.prior, device, dataclasses.replace(base.exemplar, multi_view=False))
    prompts = list(cfg.prompts) or list(truth_prior.prompts)
    for p in prompts:
        truth_prior.truth(p)  # fails fast on a prompt outside the library
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    scorers = {p: Scorer(truth_prior, p, cfg, base) for p in prompts}

    keys = {s: ceiling_key(cfg.prior, run_of(cfg.guidance[0], s, cfg.seeds[0]), cfg.eval_views,
                           cfg.eval_resolution, cfg.janus_elevations) for s in cfg.scene}  # fmt: skip
    reused = reused_references(cfg.references, keys, prompts) if cfg.references is not None else {}
    references: list[dict[str, Any]] = []
    for scene_name in cfg.scene:
        run = run_of(cfg.guidance[0], scene_name, cfg.seeds[0])
        for p in prompts:
            t0 = time.perf_counter()
            if (p, scene_name) in reused:
                ceiling = reused[(p, scene_name)]
            else:
                score = scorers[p].score(supervised_ceiling(truth_prior, p, run, device), device)
                ceiling = {"ceiling_psnr": score["psnr"], "ceiling_mask_iou": score["mask_iou"],
                           "ceiling_janus": score["janus"], "ceiling_seconds": time.perf_counter() - t0}  # fmt: skip
            references.append({"prompt": p, "scene": scene_name, "floor_psnr": scorers[p].floor, **ceiling})
            how = f"reused from {cfg.references}" if (p, scene_name) in reused else "trained"
            print(f"[bench] ceiling {scene_name} '{p}': PSNR {ceiling['ceiling_psnr']:.2f} (floor {scorers[p].floor:.2f}; {how})", flush=True)
    refs = {(r["prompt"], r["scene"]): r for r in references}

    records: list[dict[str, Any]] = []
    for guidance in cfg.guidance:
        priors = load_priors(run_of(guidance, cfg.scene[0], cfg.seeds[0]), device) if old is None else None
        for scene_name in cfg.scene:
            for seed in cfg.seeds:
                run = run_of(guidance, scene_name, seed)
                rows: list[SheetRow] = []
                for p in prompts:
                    if old is None:
                        result: Any = generate(p, run, priors=priors, progress=False)
                    else:
                        result = load_run(old.record(p, guidance, scene_name, seed), device)
                    scores = scorers[p].score(result.scene, device)
                    ref = refs[(p, scene_name)]
                    span = ref["ceiling_psnr"] - ref["floor_psnr"]
                    normalized = (scores["psnr"] - ref["floor_psnr"]) / span if span > 0 else None
                    family = truth_prior.truth(p).family
                    record = {"prompt": p, "family": family, "guidance": guidance, "scene": scene_name, "seed": seed, **scores,
                              "chamfer": _mesh_chamfer(result.run_dir, scorers[p].mesh), "normalized": normalized,
                              **_mesh_fidelity(result.summary),
                              "seconds": result.seconds, "run_dir": str(result.run_dir)}  # fmt: skip
                    records.append(record)
                    if scorers[p].sheet_truth is not None:
                        label = f"{p}\n[{family or '-'}] normalized {_fmt(normalized)}"
                        rows.append(SheetRow(label, scorers[p].sheet_truth, scorers[p].sheet_render(result.scene, device)))
                    print(f"[bench] {guidance} {scene_name} seed {seed} '{p}': PSNR {scores['psnr']:.2f} "
                          f"normalized {_fmt(normalized)} Janus {scores['janus']:.2f} ({result.seconds:.0f} s)", flush=True)  # fmt: skip
                if rows:
                    sheet = cfg.output_dir / f"contact-{guidance}-{scene_name}-seed{seed}.png"
                    contact_sheet(rows, sheet, cfg.sheet_resolution)
                    print(f"[bench] contact sheet {sheet} (truth | result)", flush=True)

    result = {
        "config": {"prior": cfg.prior, "guidance": list(cfg.guidance), "scene": list(cfg.scene), "steps": cfg.steps,
                   "seeds": list(cfg.seeds), "device": str(device), "eval_views": cfg.eval_views,
                   "library": cfg.library, "split": cfg.split, "eval_resolution": cfg.eval_resolution,
                   "references": None if cfg.references is None else str(cfg.references),
                   "rescore": None if cfg.rescore is None else str(cfg.rescore)},  # fmt: skip
        "records": records,
        "references": references,
        "ceiling_keys": keys,
        "averages": _averages(records),
        "summary": summaries(records),
    }
    from sds3d.checkpoint import write_json_atomic

    write_json_atomic(cfg.output_dir / "results.json", result)
    table = markdown_table(result) + "\n" + summary_table(result["summary"])
    (cfg.output_dir / "results.md").write_text(table)
    print(table, flush=True)
    return result


def main() -> None:
    import sys

    import tyro

    cfg = tyro.cli(BenchConfig)
    run_bench(cfg, typed_run_options(cfg, sys.argv[1:]))


if __name__ == "__main__":
    main()
