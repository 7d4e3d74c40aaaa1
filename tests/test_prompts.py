import pytest

from sds3d.cameras import orbit_cameras
from sds3d.prompts import PromptSet, read_prompt_file
from sds3d.types import SDS3DError


def test_view_dependent_prompts():
    cams = orbit_cameras([0.0, 0.0, 0.0, 80.0], [0.0, 90.0, 180.0, 0.0], 3.0, 40.0, 8, 8)
    ps = PromptSet("a corgi")
    assert ps.for_cameras(cams) == ["a corgi, front view", "a corgi, side view", "a corgi, back view", "a corgi, overhead view"]
    assert PromptSet("a corgi", view_dependent=False).for_cameras(cams) == ["a corgi"] * 4
    assert ps.empties(2) == ["", ""]


def test_empty_prompt_is_a_clear_error():
    with pytest.raises(SDS3DError, match="prompt is empty"):
        PromptSet("   ")


def test_prompt_file_comments_blanks_whitespace(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# header\n\n  a corgi  \n# a comment\na cat | seed=2\n")
    assert read_prompt_file(f) == ["a corgi", "a cat | seed=2"]
    with pytest.raises(SDS3DError, match="not found"):
        read_prompt_file(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SDS3DError, match="cannot read"):
        read_prompt_file(bad)
