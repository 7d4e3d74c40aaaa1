"""``sds3d bench exemplar|speed|rasterizer|surfaces|demo-strip|batch|scale``: the benchmarks, each printing a
table, and the README's picture."""

from __future__ import annotations

from typing import Annotated, Any, Mapping, Union

import tyro

from sds3d.bench.batch_engines import BatchBenchConfig, run_batch_bench
from sds3d.bench.demo_strip import DemoStripConfig, run_demo_strip
from sds3d.bench.exemplar import BenchConfig, run_bench
from sds3d.bench.rasterizer import RasterizerBenchConfig, run_rasterizer_bench
from sds3d.bench.scale import ScaleConfig, run_scale_bench
from sds3d.bench.speed import SpeedConfig, run_speed_bench
from sds3d.bench.surfaces import SurfacesBenchConfig, run_surfaces_bench

BenchCommand = Union[
    Annotated[BenchConfig, tyro.conf.subcommand("exemplar", prefix_name=False)],
    Annotated[SpeedConfig, tyro.conf.subcommand("speed", prefix_name=False)],
    Annotated[RasterizerBenchConfig, tyro.conf.subcommand("rasterizer", prefix_name=False)],
    Annotated[SurfacesBenchConfig, tyro.conf.subcommand("surfaces", prefix_name=False)],
    Annotated[DemoStripConfig, tyro.conf.subcommand("demo-strip", prefix_name=False)],
    Annotated[BatchBenchConfig, tyro.conf.subcommand("batch", prefix_name=False)],
    Annotated[ScaleConfig, tyro.conf.subcommand("scale", prefix_name=False)],
]


def bench(cmd: Annotated[BenchCommand, tyro.conf.arg(name="")]) -> BenchCommand:
    """Benchmarks: exemplar (quality on CPU), speed (step time vs the UNet floor), rasterizer,
    surfaces (mesh extraction methods on trained runs), demo-strip (the README's picture), batch
    (a prompt file under the local and the Ray engine), scale (every guidance x scene end to end at
the real model size, random weights, one generate process a row)."""
    return cmd


def run_bench_command(cmd: object, run_options: Mapping[str, Any] | None = None) -> int:
    """Run a bench command (``run_options``: the exemplar bench's run options set, see
    :func:`sds3d.bench.exemplar.typed_run_options`)."""
    if isinstance(cmd, BenchConfig):
        run_bench(cmd, run_options)
    elif isinstance(cmd, SpeedConfig):
        run_speed_bench(cmd)
    elif isinstance(cmd, RasterizerBenchConfig):
        run_rasterizer_bench(cmd)
    elif isinstance(cmd, SurfacesBenchConfig):
        run_surfaces_bench(cmd)
    elif isinstance(cmd, DemoStripConfig):
        run_demo_strip(cmd)
    elif isinstance(cmd, BatchBenchConfig):
        run_batch_bench(cmd)
    elif isinstance(cmd, ScaleConfig):
        run_scale_bench(cmd)
    else:
        raise TypeError(f"unknown bench command {cmd!r}")
    return 0
