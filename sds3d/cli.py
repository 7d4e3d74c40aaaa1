"""The ``sds3d`` command: generate, batch, export, bench.

    sds3d generate "a DSLR photo of a corgi" [options]
    sds3d generate --resume outputs/a-dslr-photo-of-a-corgi-20261126-101500
    sds3d batch prompts/animals.txt [options] [--shard 0/4 | --engine ray]
    sds3d export RUN_DIR [--format glb obj ply] [--resolution 256] [--texture]
    sds3d bench exemplar|speed|rasterizer [options]
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

import tyro

from sds3d.config import RunConfig
from sds3d.recipes import build_recipe, leaf_diff, load_config, recipe_bases, resolve_run
from sds3d.types import SDS3DError

if TYPE_CHECKING:
    from sds3d.export import ExportResult


@dataclass(frozen=True)
class Generate:
    """Optimize a 3D scene for one prompt; write previews, turntable, checkpoint and mesh."""

    prompt: tyro.conf.Positional[str] = ""
    """The text to generate (not needed with --resume)."""
    run: Annotated[RunConfig, tyro.conf.arg(name="")] = RunConfig()
    resume: Path | None = None
    """Continue an interrupted run folder from its checkpoint with the run's own saved config
    (other options are ignored)."""


@dataclass(frozen=True)
class Batch:
    """Generate every prompt of one or more prompt files; rerun the same command to resume."""

    files: tyro.conf.Positional[tuple[Path, ...]]
    """Prompt files: one prompt a line, '#' comments, optional overrides 'a corgi | seed=3 steps=2000'."""
    run: Annotated[RunConfig, tyro.conf.arg(name="")] = RunConfig()
    batch_dir: Path | None = None
    """Batch folder (default OUTPUT_DIR/batch-<first file's stem>); holds one run folder per
    prompt, manifest.jsonl and index.html."""
    shard: str | None = None
    """Take every N-th prompt starting at I, as 'I/N' (0-based), for SLURM arrays and torchrun
    (in-process engine). Under torchrun the shard is RANK/WORLD_SIZE and the GPU LOCAL_RANK unless given."""
    engine: Literal["local", "ray"] = "local"
    """local: run the prompts one after another in this process; ray: hand them to a Ray
    cluster, one at a time to each free worker, retrying a prompt whose worker dies."""
    ray_address: str | None = None
    """With --engine ray: 'auto' or HOST:PORT joins that cluster; unset starts a local Ray
    instance sized to this machine."""
    cpus_per_run: int = 1
    """With --engine ray: CPUs each worker holds (on a machine without GPUs: workers = CPUs / this)."""
    gpus_per_run: int | None = None
    """With --engine ray: GPUs each worker holds (default: 1 when the cluster has GPUs and --device
    is not cpu, else 0)."""
    retries: int = 2
    """With --engine ray: times a prompt is run again after its worker process or node died
    (it resumes from its latest checkpoint)."""


@dataclass(frozen=True)
class Export:
    """Re-export the mesh of a finished or interrupted run from its checkpoint (summary.json's
    mesh entry is replaced)."""

    run_dir: tyro.conf.Positional[Path]
    """A run folder written by sds3d generate."""
    format: tuple[Literal["glb", "obj", "ply"], ...] | None = None
    """Mesh formats (default: the run's --export.formats)."""
    resolution: int | None = None
    """Marching-cubes grid resolution (default: the run's --export.resolution)."""
    texture: bool | None = None
    """Bake a UV texture with xatlas instead of vertex colours (default: the run's setting)."""
    refine_steps: int | None = None
    """Refine-stage steps fitting the mesh colours to the scene's renders; 0 skips it (default:
    the run's --export.refine-steps; the default, 100, for runs saved before that option existed)."""
    device: str | None = None
    """Device to load the scene on (default: the run's)."""


def run_generate(cmd: Generate) -> int:
    from sds3d.train import generate

    if cmd.resume is not None:
        run_dir = cmd.resume
        prompt, cfg = load_config(run_dir / "config.json")
        result = generate(prompt, cfg, run_dir=run_dir, resume=True)
    else:
        if not cmd.prompt.strip():
            raise SDS3DError('the prompt is empty: pass the text to generate, e.g. sds3d generate "a corgi"')
        result = generate(cmd.prompt, cmd.run)
    print(f"done in {result.seconds:.1f} s: {result.run_dir}")
    return 0


def run_export(cmd: Export) -> int:
    from sds3d.export import export_scene
    from sds3d.factory import load_scene

    prompt, cfg = load_config(cmd.run_dir / "config.json")
    if cmd.device is not None:
        cfg = dataclasses.replace(cfg, device=cmd.device)
    export_cfg = cfg.export
    if cmd.format is not None:
        export_cfg = dataclasses.replace(export_cfg, formats=cmd.format)
    if cmd.resolution is not None:
        export_cfg = dataclasses.replace(export_cfg, resolution=cmd.resolution)
    if cmd.texture is not None:
        export_cfg = dataclasses.replace(export_cfg, texture=cmd.texture)
    if cmd.refine_steps is not None:
        export_cfg = dataclasses.replace(export_cfg, refine_steps=cmd.refine_steps)
    device = cfg.resolve_device()
    scene = load_scene(cmd.run_dir, cfg, device, if_missing="there is no scene to export")
    result = export_scene(scene, cmd.run_dir, export_cfg, cfg.cameras, device)
    update_summary(cmd.run_dir, prompt, result)
    for p in result.paths:
        print(p)
    fid = result.fidelity
    print(f"mesh: {result.num_vertices} vertices, {result.num_faces} faces, {result.pieces} piece(s), Euler characteristic {result.euler}")
    if fid:
        print(f"mesh vs scene at {fid['resolution']} px: object PSNR {fid['psnr_object']:.2f} dB (whole frame {fid['psnr']:.2f} dB), "
              f"mask IoU {fid['mask_iou']:.3f} (summary.json updated)")
    return 0


def update_summary(run_dir: Path, prompt: str, result: ExportResult) -> None:
    """Replace summary.json's mesh entry with a re-export's and add its files; the run's status,
    timings and error stay as they were (a missing or unreadable summary starts a new one)."""
    import json

    from sds3d.checkpoint import write_json_atomic

    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        summary = {"prompt": prompt}
    files = set(summary.get("files", [])) | {str(p.relative_to(run_dir)) for p in result.paths}
    summary.update(files=sorted(files), mesh=result.summary())
    write_json_atomic(path, summary)


def _commands(run: RunConfig) -> Any:
    from sds3d.bench.cli import bench

    return Union[
        Annotated[Generate, tyro.conf.subcommand("generate", default=Generate(run=run), prefix_name=False)],
        Annotated[Batch, tyro.conf.subcommand("batch", default=Batch(files=(), run=run), prefix_name=False)],
        Annotated[Export, tyro.conf.subcommand("export", prefix_name=False)],
        Annotated[Any, tyro.conf.subcommand("bench", constructor=bench, prefix_name=False)],
    ]


def _tyro(run: RunConfig, argv: list[str]) -> Any:
    """The command of ``argv`` with ``run`` as generate's and batch's defaults."""
    return tyro.cli(_commands(run), prog="sds3d", description="Text to 3D by score distillation (3D Gaussians or NeRF).", args=argv)  # type: ignore[call-overload]


def parse_command(argv: list[str]) -> tuple[Any, dict[str, Any]]:
    """(command, the run options the user set). For generate and batch the command's ``run`` is
    :func:`sds3d.recipes.resolve_run` of the options set, so a recipe's value is replaced only by
    an option the user typed.

    tyro fills untyped options with the defaults it is given, so the command line is parsed once
    with each recipe (the exemplar one per scene) as the defaults: an option is set exactly when some parse differs from its
    recipe there (a typed value that equals every recipe's is the same whichever recipe wins)."""
    if any(a in ("-h", "--help") for a in argv):
        _print_help(argv)
    parsed: list[tuple[RunConfig, Any]] = []
    first_error: Exception | None = None
    for base in recipe_bases():
        try:
            cmd = _tyro(base, argv)
        except (SDS3DError, ValueError) as e:  # config validation while parsing, against this recipe
            first_error = first_error or e
            continue
        if not isinstance(cmd, (Generate, Batch)):
            return cmd, _bench_run_options(cmd, argv)
        parsed.append((base, cmd))
    if not parsed:
        assert first_error is not None
        raise SDS3DError(str(first_error))
    typed: dict[str, Any] = {}
    for base, cmd in parsed:
        typed.update(leaf_diff(cmd.run, base))
    cmd = parsed[0][1]
    if isinstance(cmd, Generate) and cmd.resume is not None:
        return cmd, typed  # the run's own saved config is used
    return dataclasses.replace(cmd, run=resolve_run(typed)), typed


def _bench_run_options(cmd: Any, argv: list[str]) -> dict[str, Any]:
    """The run options set on an ``sds3d bench exemplar`` command line (each scene starts from its
    own recipe); no options for the other commands."""
    from sds3d.bench.exemplar import BenchConfig, typed_run_options

    if not isinstance(cmd, BenchConfig):
        return {}
    return typed_run_options(cmd, argv[argv.index("exemplar") + 1 :])


def _print_help(argv: list[str]) -> None:
    """``--help`` shows the defaults of the recipe the other options select (``--prior exemplar
    --help`` prints the exemplar recipe's values); tyro prints and exits."""
    rest = [a for a in argv if a not in ("-h", "--help")]
    name, scene = "text-to-image", "gaussians"
    try:
        _, typed = parse_command(rest)
        name, scene = resolve_run(typed).recipe or name, typed.get("scene", scene)
    except (SDS3DError, ValueError, SystemExit):
        pass  # an incomplete command line (no prompt yet): the text-to-image defaults
    _tyro(build_recipe(name, scene=scene), argv)


def main(argv: list[str] | None = None) -> int:
    from sds3d.bench.cli import run_bench_command

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cmd, typed = parse_command(argv)
    except (SDS3DError, ValueError) as e:
        print(f"sds3d: error: {e}", file=sys.stderr)
        return 2
    try:
        if isinstance(cmd, Generate):
            return run_generate(cmd)
        if isinstance(cmd, Batch):
            from sds3d.batch import run_batch

            return run_batch(cmd, typed)
        if isinstance(cmd, Export):
            return run_export(cmd)
        return run_bench_command(cmd, typed)
    except KeyboardInterrupt:
        print("sds3d: interrupted", file=sys.stderr)
        return 130
    except SDS3DError as e:
        print(f"sds3d: error: {e}", file=sys.stderr)
        from sds3d.train import RunInterrupted

        return 130 if isinstance(e, RunInterrupted) else 1


if __name__ == "__main__":
    sys.exit(main())
