"""``sds3d bench surfaces RUN_DIR ...``: compare ways to turn a trained scene into a mesh.

Every method ends the same way as the export (cleanup, vertex colours projected from the
scene's renders, the refine stage (``--export.refine-steps``, on views off the evaluation
orbit), mesh-vs-scene fidelity at 128 px on the evaluation cameras), so the table compares
geometry only:

* ``density``: the level set of the scene's density at the silhouette-rule level (the export
  before ``--export.close-radius``);
* ``closed``: the same with gaps closed (``--export.close-radius``, the export's default);
* ``smoothed``: the density blurred by a Gaussian of one voxel, then the silhouette rule;
* ``fusion``: depth fusion of the scene's renders (2DGS / GOF-style): ``views`` renders (alpha,
  expected depth) over the sphere; every grid node takes the mean over the views that see it
  of ``clamp((depth - z) / trunc, -1, 1)`` where the pixel is opaque (alpha > 0.5) and +1
  where it is background (free space); the surface is its zero level (a truncated signed
  distance in which background pixels and depths behind the surface also vote, so it stays
  closed where a plain TSDF leaves unobserved space open);
* ``poisson``: screened Poisson reconstruction (Kazhdan & Hoppe 2013, Open3D's implementation,
  octree depth 8) of the opaque pixels back-projected from the same renders, normals from
  their neighbours turned toward the camera that saw them; skipped when ``open3d`` is not
  installed (it is not a dependency of sds3d).

Prints one row per run and method and the averages; writes ``OUTPUT`` (JSON) when given.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import mcubes
import numpy as np
import torch
import trimesh
import tyro
from scipy import ndimage

from sds3d.cameras import Cameras, eval_cameras
from sds3d.export import extract_mesh
from sds3d.export.cleanup import clean_mesh, count_pieces
from sds3d.export.fidelity import mesh_fidelity
from sds3d.export.marching import density_grid, ray_march_grid, render_alpha, scene_bounds, silhouette_threshold, threshold_cameras
from sds3d.export.refine import refine_cameras, refine_on_cameras
from sds3d.export.texture import colours_from_renders, sphere_cameras
from sds3d.types import Scene, render_views

METHODS = ("density", "closed", "smoothed", "fusion", "poisson")


@dataclass(frozen=True)
class SurfacesBenchConfig:
    """Mesh extraction methods compared on trained runs (mesh vs scene at --resolution px)."""

    run_dirs: tyro.conf.Positional[tuple[Path, ...]]
    """Run folders with checkpoint.pt and config.json (from sds3d generate or sds3d bench exemplar)."""
    methods: tuple[str, ...] = METHODS
    """Methods to compare (module docstring)."""
    grid: int = 128
    """Grid nodes along the longest side of the scene bounds (all methods)."""
    resolution: int = 128
    """Size of the fidelity renders (and of the renders fused or back-projected)."""
    views: int = 48
    """Renders fused (fusion) or back-projected (poisson)."""
    output: Path | None = None
    """JSON file for the rows (optional)."""


def _mc(grid: np.ndarray, level: float, origin: np.ndarray, voxel: float) -> trimesh.Trimesh:
    v, f = mcubes.marching_cubes(grid.astype(np.float64), float(level))
    return trimesh.Trimesh(origin + voxel * v, f.astype(np.int64), process=False)


def _renders(scene: Scene, cams: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    out = render_views(scene, cams, "cpu")
    return out.alpha[..., 0], out.depth[..., 0]


def fusion_mesh(scene: Scene, cams: Cameras, lo: np.ndarray, hi: np.ndarray, res: int, trunc_voxels: float = 2.0) -> trimesh.Trimesh:
    """Zero level of the fused truncated signed distance (module docstring)."""
    alpha, depth = _renders(scene, cams)
    voxel = float((hi - lo).max() / (res - 1))
    counts = np.ceil((hi - lo) / voxel - 1e-6).astype(int) + 1
    axes = [torch.tensor(lo[a] + voxel * np.arange(counts[a]), dtype=torch.float32) for a in range(3)]
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    num, den = torch.zeros(len(pts)), torch.zeros(len(pts))
    trunc = trunc_voxels * voxel
    for v in range(len(cams)):
        pc = pts @ cams.viewmats[v, :3, :3].T + cams.viewmats[v, :3, 3]
        z = pc[:, 2].clamp_min(1e-6)
        K = cams.Ks[v]
        u = (K[0, 0] * pc[:, 0] / z + K[0, 2]).floor().long()
        w = (K[1, 1] * pc[:, 1] / z + K[1, 2]).floor().long()
        seen = (u >= 0) & (u < cams.width) & (w >= 0) & (w < cams.height) & (pc[:, 2] > 0)
        idx = w.clamp(0, cams.height - 1) * cams.width + u.clamp(0, cams.width - 1)
        opaque = alpha[v].reshape(-1)[idx] > 0.5
        sdf = ((depth[v].reshape(-1)[idx] - z) / trunc).clamp(-1, 1)
        num += torch.where(seen, torch.where(opaque, sdf, torch.ones_like(sdf)), torch.zeros_like(sdf))
        den += seen.float()
    field = torch.where(den > 0, num / den.clamp_min(1), torch.ones_like(num)).reshape(*counts).numpy()
    return _mc(-np.pad(field, 1, constant_values=1.0), 0.0, lo - voxel, voxel)


def poisson_mesh(scene: Scene, cams: Cameras, depth_octree: int = 8) -> trimesh.Trimesh:
    """Screened Poisson over the opaque pixels back-projected from the renders (module docstring)."""
    import open3d as o3d

    alpha, depth = _renders(scene, cams)
    origins, dirs = cams.rays()
    forward = cams.c2w()[:, :3, 2]
    cos = (dirs * forward[:, None, None]).sum(-1)
    keep = alpha > 0.5
    points = (origins + dirs * (depth / cos)[..., None])[keep].double().numpy()
    centres = origins[keep].double().numpy()
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(16))
    normals = np.asarray(pcd.normals)
    flip = np.einsum("ij,ij->i", normals, centres - points) < 0
    normals[flip] *= -1
    pcd.normals = o3d.utility.Vector3dVector(normals)
    mesh, dens = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=depth_octree)
    dens = np.asarray(dens)
    mesh.remove_vertices_by_mask(dens < np.quantile(dens, 0.02))
    return trimesh.Trimesh(np.asarray(mesh.vertices), np.asarray(mesh.triangles), process=False)


def smoothed_mesh(scene: Scene, cams_cfg, lo: np.ndarray, hi: np.ndarray, res: int, resolution: int) -> trimesh.Trimesh:
    grid, origin, voxel = density_grid(scene, lo, hi, res, "cpu")
    grid = ndimage.gaussian_filter(grid, 1.0)
    cams = threshold_cameras(cams_cfg, resolution=resolution)
    tau, _ = silhouette_threshold(ray_march_grid(grid, origin, voxel, cams)[0], render_alpha(scene, cams, "cpu"))
    return _mc(grid, tau, origin, voxel)


def _load(run_dir: Path):
    from sds3d.recipes import load_config
    from sds3d.factory import load_scene
    prompt, cfg = load_config(run_dir / "config.json")
    cfg = replace(cfg, device="cpu")
    scene = load_scene(run_dir, cfg, torch.device("cpu"), if_missing="train the run first")
    return prompt, cfg, scene


def run_surfaces_bench(cfg: SurfacesBenchConfig) -> list[dict]:
    rows = []
    for run_dir in cfg.run_dirs:
        prompt, run, scene = _load(Path(run_dir))
        with scene.eval_mode():  # NeRF: fixed samples and albedo shading throughout
            lo, hi = scene_bounds(scene)
            base = replace(run.export, resolution=cfg.grid, eval_resolution=cfg.resolution, render_resolution=cfg.resolution,
                           eval_views=8, turntable=False)  # fmt: skip
            sphere = sphere_cameras(run.cameras, cfg.views, cfg.resolution)
            build: dict[str, Callable[[], trimesh.Trimesh]] = {
                "density": lambda: extract_mesh(scene, replace(base, close_radius=0.0), run.cameras, "cpu")[0],
                "closed": lambda: extract_mesh(scene, base, run.cameras, "cpu")[0],
                "smoothed": lambda: smoothed_mesh(scene, run.cameras, lo, hi, cfg.grid, cfg.resolution),
                "fusion": lambda: fusion_mesh(scene, sphere, lo, hi, cfg.grid),
                "poisson": lambda: poisson_mesh(scene, sphere),
            }
            evals = eval_cameras(run.cameras, 8, cfg.resolution, cfg.resolution)
            refine_cams = refine_cameras(run.cameras, base.refine_views, cfg.resolution, avoid=evals)
            for method in cfg.methods:
                if method == "poisson" and not _has_open3d():
                    print(f"[surfaces] {prompt}: poisson skipped (pip install open3d to compare it)")
                    continue
                t0 = time.perf_counter()
                mesh = build[method]()
                if method not in ("density", "closed"):  # extract_mesh already cleaned and coloured these
                    mesh = clean_mesh(mesh, base.min_component_fraction, base.face_budget)
                    bake = sphere_cameras(run.cameras, base.bake_views, cfg.resolution)
                    col = colours_from_renders(scene, mesh, np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals), bake, "cpu")
                    rgba = np.concatenate([np.round(col * 255), np.full((len(col), 1), 255)], 1).astype(np.uint8)
                    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
                if base.refine_steps > 0:
                    mesh = refine_on_cameras(mesh, scene, refine_cams, base.refine_steps, "cpu").mesh
                seconds = time.perf_counter() - t0
                fid = mesh_fidelity(mesh, scene, evals, "cpu")
                rows.append({"prompt": prompt, "run_dir": str(run_dir), "method": method, "psnr_object": fid["psnr_object"],
                             "psnr": fid["psnr"], "mask_iou": fid["mask_iou"], "pieces": count_pieces(mesh),
                             "euler": int(mesh.euler_number), "faces": len(mesh.faces), "seconds": seconds})  # fmt: skip
                r = rows[-1]
                print(f"[surfaces] {prompt:24s} {method:9s} object PSNR {r['psnr_object']:.2f} PSNR {r['psnr']:.2f} "
                      f"IoU {r['mask_iou']:.3f} pieces {r['pieces']} Euler {r['euler']} ({seconds:.1f} s)", flush=True)  # fmt: skip
    print(markdown(rows))
    if cfg.output is not None:
        cfg.output.write_text(json.dumps(rows, indent=1))
    return rows


def _has_open3d() -> bool:
    try:
        import open3d  # noqa: F401
    except ImportError:
        return False
    return True


def markdown(rows: list[dict]) -> str:
    """Average per method: object PSNR, whole-frame PSNR, IoU, pieces, Euler, seconds, worst object PSNR."""
    lines = ["| method | object PSNR | worst object PSNR | PSNR | mask IoU | pieces | Euler | s |", "|---|---|---|---|---|---|---|---|"]
    for m in dict.fromkeys(r["method"] for r in rows):
        sel = [r for r in rows if r["method"] == m]
        mean = lambda k: sum(r[k] for r in sel) / len(sel)  # noqa: E731
        worst = min(r["psnr_object"] for r in sel)
        lines.append(f"| {m} | {mean('psnr_object'):.2f} | {worst:.2f} | {mean('psnr'):.2f} | {mean('mask_iou'):.3f} | "
                     f"{mean('pieces'):.1f} | {mean('euler'):.1f} | {mean('seconds'):.1f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    run_surfaces_bench(tyro.cli(SurfacesBenchConfig))


if __name__ == "__main__":
    main()
