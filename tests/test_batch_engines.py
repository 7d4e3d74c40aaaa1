"""``sds3d bench batch``: the engine benchmark's machinery on a 2-prompt file (local engine only;
the Ray engine's behaviour is tested in test_ray_engine.py, its speed is the benchmark's)."""

from __future__ import annotations

import json

from conftest import EXEMPLAR_CLI_FAST
from sds3d.bench.batch_engines import BatchBenchConfig, run_batch_bench


def test_batch_bench_times_a_prompt_file(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a snowman\na rubber duck | seed=3\n")
    cfg = BatchBenchConfig(prompts=prompts, engines=("local",), steps=2, output_dir=tmp_path / "bench", extra=tuple(EXEMPLAR_CLI_FAST))
    (r,) = run_batch_bench(cfg)
    assert (r.engine, r.done, r.failed, r.workers, len(r.prompt_s)) == ("local", 2, 0, 1, 2)
    assert all(s > 0 for s in r.prompt_s) and r.wall_s > sum(r.prompt_s)  # one process: the prompts one after another
    assert 0 < r.fixed_s < r.wall_s
    saved = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert saved[0]["done"] == 2 and abs(saved[0]["wall_s"] - r.wall_s) < 1e-9
    out = capsys.readouterr().out
    assert "prompts/min" in out and "local" in out.splitlines()[-1]
