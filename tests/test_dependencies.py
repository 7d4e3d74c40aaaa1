"""The dependencies whose behaviour the recipes rely on are bounded above and below in
pyproject.toml, and the installed releases (what CI tests) fall inside the bounds."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

pytest.importorskip("packaging")
from packaging.requirements import Requirement  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@pytest.mark.parametrize("name", ["gsplat", "nerfacc", "diffusers"])
def test_bounded_and_installed_release_inside(name: str) -> None:
    deps = [Requirement(d) for d in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]]
    (req,) = [r for r in deps if r.name == name]
    ops = {s.operator for s in req.specifier}
    assert ">=" in ops and "<" in ops, f"{name} needs a lower and an upper bound: {req}"
    assert req.specifier.contains(version(name)), f"installed {name} {version(name)} is outside {req.specifier}"
