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
