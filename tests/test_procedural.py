"""The procedural exemplar library: determinism, the fixed split, family coverage, thin parts."""

from __future__ import annotations

import numpy as np
import pytest

from sds3d.priors.procedural import SPLITS, generate_object, parse_spec, procedural_library, split_digest, split_objects
from sds3d.priors.procedural_families import FAMILIES, TALL_FAMILIES, THIN_FAMILIES
from sds3d.priors.procedural_shapes import length, thickness
from sds3d.types import SDS3DError

TEST_DIGEST = "d800a470ed4be7ba205969662851ce06421a2316827e6a3c4f9c34cefb197a82"


def test_test_split_is_pinned() -> None:
    assert split_digest("test") == TEST_DIGEST


def test_deterministic_and_seed_dependent() -> None:
    a, b, c = generate_object("chair", 1000), generate_object("chair", 1000), generate_object("chair", 1001)
    assert a.prompt == b.prompt and np.array_equal(a.mesh().vertices, b.mesh().vertices)
    assert a.mesh().vertices.shape != c.mesh().vertices.shape or not np.allclose(a.mesh().vertices, c.mesh().vertices)


def test_splits_disjoint_counts_and_unique_prompts() -> None:
    assert len(FAMILIES) >= 14
    assert not set(SPLITS["train"]) & set(SPLITS["test"])
    for split in SPLITS:
        objs = split_objects(split)
        assert len(objs) == 2 * len(FAMILIES) and len(objs) >= 24
        assert all(sum(o.family == f for o in objs) == 2 for f in FAMILIES)
        prompts = [o.prompt.lower() for o in objs]
        assert all(sum(p in q or q in p for q in prompts) == 1 for p in prompts)  # no prompt names two


def test_normalised_with_parts() -> None:
    for o in split_objects("train"):
        m = o.mesh()
        assert np.linalg.norm(m.vertices, axis=1).max() == pytest.approx(1.0, abs=1e-9)
        assert np.allclose((m.bounds[0] + m.bounds[1]) / 2, 0, atol=1e-9)
        assert len(set(map(tuple, m.visual.vertex_colors[:, :3]))) >= 2  # several colours


def test_thin_and_tall_families() -> None:
    for split in SPLITS:
        for o in split_objects(split):
            ext = o.mesh().bounds[1] - o.mesh().bounds[0]
            if o.family in THIN_FAMILIES:
                thin = [p for p in o.parts if p.kind == "thin" and p.mesh.is_watertight]
                # a stick: thickness under 6% of the unit sphere's diameter and 5x longer than thick
                assert any(thickness(p.mesh) < 0.12 and length(p.mesh) > 5 * thickness(p.mesh) for p in thin), o.prompt
            if o.family in TALL_FAMILIES:
                assert ext[2] >= 1.8 * max(ext[0], ext[1]), o.prompt


def test_specs_and_bad_split() -> None:
    assert parse_spec("procedural-test") == "test" and parse_spec("my_meshes") is None
    with pytest.raises(SDS3DError, match="unknown split"):
        parse_spec("procedural-val")
    lib = procedural_library("train")
    assert {o.family for o in lib} == set(FAMILIES)
