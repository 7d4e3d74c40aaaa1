import json
import multiprocessing as mp

import pytest

from sds3d.batch import (
    append_manifest,
    apply_overrides,
    parse_line,
    parse_shard,
    read_entries,
    read_manifest,
)
from sds3d.config import RunConfig
from sds3d.types import SDS3DError


def test_parse_line_and_overrides():
    prompt, ov = parse_line("a corgi | seed=3 steps=20 sds.guidance-scale=50")
    assert prompt == "a corgi"
    assert ov == (("seed", "3"), ("steps", "20"), ("sds.guidance_scale", "50"))
    cfg = apply_overrides(RunConfig(), (("seed", "3"), ("steps", "20"), ("guidance", "nfsd"), ("view_dependent", "false")))
    assert (cfg.seed, cfg.steps, cfg.guidance, cfg.view_dependent) == (3, 20, "nfsd", False)
    with pytest.raises(SDS3DError, match="unknown option"):
        apply_overrides(RunConfig(), (("sead", "3"),))
    with pytest.raises(SDS3DError, match="bad value"):
        apply_overrides(RunConfig(), (("steps", "many"),))
    with pytest.raises(SDS3DError, match="bad value"):
        apply_overrides(RunConfig(), (("guidance", "magic"),))
    with pytest.raises(SDS3DError, match="key=value"):
        parse_line("a corgi | seed")


def test_read_entries_comments_blanks_duplicates(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# c\n a corgi \n\na cat | seed=2\na corgi\na cat | seed=2\na cat\n")
    entries = read_entries((f,), RunConfig(prior="exemplar", steps=5))
    assert [(e.prompt, e.cfg.seed) for e in entries] == [("a corgi", 0), ("a cat", 2), ("a cat", 0)]
    assert [e.index for e in entries] == [0, 1, 2]
    assert entries[1].run_name() == "0001-a-cat"


def test_bad_values_fail_before_any_model_loads(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a corgi | steps=-1\n")
    with pytest.raises(SDS3DError, match="steps must be positive"):
        read_entries((f,), RunConfig())
    f.write_text("a corgi | resolution=60\n")
    with pytest.raises(SDS3DError, match="multiples of 8"):
        read_entries((f,), RunConfig())
    f.write_text("# only comments\n\n")
    with pytest.raises(SDS3DError, match="no prompts"):
        read_entries((f,), RunConfig())
    with pytest.raises(SDS3DError, match="not found"):
        read_entries((tmp_path / "missing.txt",), RunConfig())


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
    monkeypatch.setattr(batch, "load_priors", lambda *a: pytest.fail("a model loaded"))
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
        assert len(err) == 1 and message in err[0], (args, err)
    assert not (tmp_path / "out").exists()
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("command", ["batch", "generate"])
def test_unknown_flag_is_a_usage_error(tmp_path, command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "a snowman", "--no-such-flag", "3"])
    assert e.value.code not in (0, None)
    assert "no-such-flag" in capsys.readouterr().err
