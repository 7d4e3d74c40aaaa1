import json
import multiprocessing as mp

import pytest
import torch

from sds3d.batch import parse_line, parse_shard, read_entries, read_manifest
from sds3d.batch.lines import BadLines, typed_overrides
from sds3d.batch.manifest import append_manifest
from sds3d.batch.runner import PriorCache
from sds3d.config import RunConfig
from sds3d.recipes import apply_overrides
from sds3d.types import SDS3DError


def test_parse_line_and_overrides():
    prompt, ov = parse_line("a corgi | seed=3 steps=20 sds.guidance-scale=50")
    assert prompt == "a corgi"
    assert ov == (("seed", "3"), ("steps", "20"), ("sds.guidance_scale", "50"))
    cfg = apply_overrides(RunConfig(), typed_overrides((("seed", "3"), ("steps", "20"), ("guidance", "nfsd"), ("view_dependent", "false"))))
    assert (cfg.seed, cfg.steps, cfg.guidance, cfg.view_dependent) == (3, 20, "nfsd", False)
    assert typed_overrides((("cameras.fovy_range", "30,50"), ("export.threshold", "none"))) == {"cameras.fovy_range": (30.0, 50.0), "export.threshold": None}
    with pytest.raises(SDS3DError, match="unknown option 'sead'"):
        typed_overrides((("sead", "3"),))
    with pytest.raises(SDS3DError, match="bad value for 'steps'"):
        typed_overrides((("steps", "many"),))
    with pytest.raises(SDS3DError, match="choose from sds, vsd"):
        typed_overrides((("guidance", "magic"),))
    with pytest.raises(SDS3DError, match="no field 'sh_degre' of gaussians"):
        typed_overrides((("gaussians.sh_degre", "1"),))
    with pytest.raises(SDS3DError, match="key=value"):
        parse_line("a corgi | seed")


def test_read_entries_comments_blanks_duplicates(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# c\n a corgi \n\na cat | seed=2\na corgi\na cat | seed=2\na cat\n")
    entries = read_entries((f,), {"prior": "exemplar", "steps": 5})
    assert [(e.prompt, e.cfg.seed) for e in entries] == [("a corgi", 0), ("a cat", 2), ("a cat", 0)]
    assert [e.index for e in entries] == [0, 1, 2]
    assert entries[1].run_name() == "0001-a-cat"
    assert all(e.cfg.recipe == "exemplar" and e.cfg.steps == 5 for e in entries)


def test_every_bad_line_of_every_file_is_one_file_line_reason(tmp_path):
    """Unknown options, bad values, a nested config's own validation and a cross-field check:
    all reported together, each as FILE:LINE: reason naming the option as written."""
    a = tmp_path / "a.txt"
    a.write_text("a snowman\n# comment\na snowman | cameras.fovy_range=10,5\na snowman | scene=nerf nerf.radius=-1\n")
    b = tmp_path / "b.txt"
    b.write_text("a cat | sead=3\n\na cat | steps=many\na cat | resolution=60\na cat | guidance=coupled batch_size=6\n | seed=3\n")
    with pytest.raises(BadLines) as e:
        read_entries((a, b), {"prior": "exemplar"})
    lines = e.value.lines
    assert [line.split(": ", 1)[0] for line in lines] == [f"{a}:3", f"{a}:4", f"{b}:1", f"{b}:3", f"{b}:4", f"{b}:5", f"{b}:6"]
    assert "cameras.fovy_range: --cameras.fovy-range: low 10.0 > high 5.0" in lines[0]
    assert "nerf.radius" in lines[1] and "radius" in lines[1]
    assert "unknown option 'sead'" in lines[2] and "bad value for 'steps'" in lines[3]
    assert "multiples of 8" in lines[4] and "multiple of 4" in lines[5] and "empty prompt" in lines[6]
    assert all("\n" not in line and "Traceback" not in line for line in lines)


def test_bad_lines_exit_2_before_any_work(tmp_path, capsys):
    from sds3d.cli import main

    f = tmp_path / "p.txt"
    f.write_text("a snowman\na snowman | cameras.fovy_range=10,5\na snowman | nerf.radius=-1 scene=nerf\n")
    assert main(["batch", str(f), "--prior", "exemplar", "--device", "cpu", "--batch-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"{f}:2: cameras.fovy_range") and err[1].startswith(f"{f}:3: nerf.radius")
    assert "nothing was run" in err[-1] and len(err) == 3
    assert not (tmp_path / "out").exists()


def test_prior_cache_loads_one_model_per_distinct_spec(tmp_path, monkeypatch):
    """Lines that differ only in a prior option load two models; lines that differ elsewhere share one."""
    import sds3d.batch.runner as runner

    loads = []
    monkeypatch.setattr(runner, "load_prior", lambda spec: loads.append(spec) or object())
    monkeypatch.setattr(runner, "precompute_prompts", lambda priors, sets: None)
    f = tmp_path / "p.txt"
    f.write_text(
        "a snowman\na snowman | seed=4 steps=9 sds.guidance_scale=3\na snowman | exemplar.camera_sigma=20\n"
        "a coffee mug | prior=some/sd diffusers.dtype=fp32\na coffee mug | prior=some/sd diffusers.tiny_vae=taesd\n"
        "a coffee mug | prior=some/sd seed=2 diffusers.dtype=fp32\n"
    )
    entries = read_entries((f,), {"prior": "exemplar", "device": "cpu"})
    assert [e.cfg.recipe for e in entries] == ["exemplar"] * 3 + ["text-to-image"] * 3
    cache = PriorCache(entries)
    got = [cache.get(e, torch.device("cpu"))[0] for e in entries]
    assert len(loads) == 4
    assert got[0] is got[1] and got[0] is not got[2] and got[3] is not got[4] and got[3] is got[5]


def test_shards_partition_the_prompts(monkeypatch):
    items = list(range(10))
    parts = [items[i::3] for i in range(3)]
    assert sorted(sum(parts, [])) == items
    assert parse_shard("1/3") == (1, 3)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert parse_shard(None) == (2, 4)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(SDS3DError, match="--shard"):
            parse_shard(bad)


def _writer(batch_dir, shard, n):
    for i in range(n):
        append_manifest(batch_dir, {"index": shard * 1000 + i, "status": "done", "pad": "x" * 2000})


def test_concurrent_manifest_writers_do_not_interleave(tmp_path):
    procs = [mp.get_context("fork").Process(target=_writer, args=(tmp_path, s, 50)) for s in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 150 and all(json.loads(line)["status"] == "done" for line in lines)
    assert len(read_manifest(tmp_path)) == 150


# ---------------------------------------------------------------------- end-to-end batches (exemplar prior, CPU)

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import sds3d.batch as batch  # noqa: E402
from conftest import EXEMPLAR_CLI_FAST  # noqa: E402
from sds3d.cli import main  # noqa: E402

ROOT = Path(__file__).parents[1]
FAST = [*EXEMPLAR_CLI_FAST, "--steps", "2"]
MIXED = """# three objects, one of them unknown to the exemplar library
   a snowman   

a snowman
a rubber duck | seed=3
# a line that only fails when it runs:
a dragon
a rubber duck | seed=3
"""


def manifest_lines(batch_dir):
    return [json.loads(line) for line in (batch_dir / "manifest.jsonl").read_text().splitlines()]


def test_mixed_batch_records_the_failure_finishes_the_rest_and_reruns_skip_done(tmp_path, capsys):
    prompts = tmp_path / "mixed.txt"
    prompts.write_text(MIXED)
    out = tmp_path / "batch"
    assert main(["batch", str(prompts), *FAST, "--batch-dir", str(out)]) == 1
    records = manifest_lines(out)
    assert [(r["index"], r["prompt"], r["status"]) for r in records] == [
        (0, "a snowman", "done"), (1, "a rubber duck", "done"), (2, "a dragon", "failed")]
    assert [r["run_dir"] for r in records] == ["0000-a-snowman", "0001-a-rubber-duck", "0002-a-dragon"]
    assert records[1]["overrides"] == {"seed": "3"}
    assert records[0]["error"] is None and "names no object" in records[2]["error"] and "'a snowman'" in records[2]["error"]
    assert all(r["seconds"] > 0 for r in records)
    for r in records[:2]:
        run = out / r["run_dir"]
        assert json.loads((run / "summary.json").read_text())["status"] == "done" and (run / "mesh.glb").exists()
    assert json.loads((out / "0001-a-rubber-duck" / "config.json").read_text())["config"]["seed"] == 3
    assert json.loads((out / "0002-a-dragon" / "summary.json").read_text())["status"] == "failed"
    page = (out / "index.html").read_text()
    for prompt, status in (("a snowman", "done"), ("a rubber duck", "done"), ("a dragon", "failed")):
        assert f'<div class="card" data-status="{status}">' in page and f'<div class="prompt">{prompt}</div>' in page
    assert "3 prompts: 2 done, 1 failed" in page and "0000-a-snowman/mesh.glb" in page
    assert "failed" in capsys.readouterr().out

    done_bytes = (out / "0000-a-snowman" / "checkpoint.pt").read_bytes()
    assert main(["batch", str(prompts), *FAST, "--batch-dir", str(out)]) == 1
    stdout = capsys.readouterr().out
    assert "skip (done): a snowman" in stdout and "skip (done): a rubber duck" in stdout
    assert [(r["prompt"], r["status"]) for r in manifest_lines(out)[3:]] == [("a dragon", "failed")]
    assert (out / "0000-a-snowman" / "checkpoint.pt").read_bytes() == done_bytes
    assert {r["status"] for r in batch.read_manifest(out).values()} == {"done", "failed"}


def test_two_concurrent_shards_write_one_consistent_manifest(tmp_path):
    prompts = tmp_path / "four.txt"
    prompts.write_text("a snowman\na dragon\na traffic cone\na coffee mug\n")
    out = tmp_path / "batch"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "cli.py", "batch", str(prompts), *FAST, "--batch-dir", str(out), "--shard", f"{i}/2"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    # shard 0 takes prompts 0 and 2, shard 1 takes 1 (the failing "a dragon") and 3
    assert [p.returncode for p in procs] == [0, 1], results
    records = manifest_lines(out)
    assert sorted(r["index"] for r in records) == [0, 1, 2, 3]  # every prompt exactly once
    status = {r["prompt"]: r["status"] for r in records}
    assert status == {"a snowman": "done", "a dragon": "failed", "a traffic cone": "done", "a coffee mug": "done"}
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "0000-a-snowman", "0001-a-dragon", "0002-a-traffic-cone", "0003-a-coffee-mug"]
    page = (out / "index.html").read_text()  # the last shard to write it had seen every record
    assert "4 prompts: 3 done, 1 failed" in page and page.count("data-status=") == 4 and "data-status=\"pending\"" not in page


def test_bad_batch_inputs_fail_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import sds3d.batch.runner as runner

    monkeypatch.setattr(runner, "load_prior", lambda *a: pytest.fail("a model loaded"))
    good = tmp_path / "good.txt"
    good.write_text("a snowman\n")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00a snowman\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        ([str(tmp_path / "missing.txt")], "prompt file not found"),
        ([str(tmp_path)], "cannot read prompt file"),  # a folder
        ([str(binary)], "cannot read prompt file"),  # not UTF-8
        ([str(good), "--batch-dir", str(blocker / "batch")], "cannot create batch folder"),
        ([str(good), "--shard", "2/2"], "--shard"),
        ([str(good), "--steps", "0"], "--steps must be positive"),
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text("a snowman\n   | seed=3\n")
    cases.append(([str(empty)], "empty prompt"))
    for args, message in cases:
        assert main(["batch", *args, *FAST[:4], "--output-dir", str(tmp_path / "out")]) != 0, args
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[0] and (len(err) == 1 or err[-1].endswith("run the same command again")), (args, err)
    assert not (tmp_path / "out").exists()
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("command", ["batch", "generate"])
def test_unknown_flag_is_a_usage_error(tmp_path, command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "a snowman", "--no-such-flag", "3"])
    assert e.value.code not in (0, None)
    assert "no-such-flag" in capsys.readouterr().err
