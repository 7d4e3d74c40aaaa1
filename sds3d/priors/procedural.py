"""The procedural exemplar library: seeded objects of parametric families, split by seed.

An object is ``(family, seed)``: the family's generator (:data:`FAMILIES` in
:mod:`sds3d.priors.procedural_families`) draws proportions, colours and optional parts from
``numpy.random.default_rng([crc32(family), seed])``, so the same pair gives the same mesh on
every run and machine, and objects of different families never share a random stream.

Splits, fixed for good (:data:`SPLITS`): ``train`` = seeds 0 and 1 of every family, ``test`` =
seeds 1000 and 1001 (28 objects each with the 14 families). Tune only on ``train``; report
``test``. :func:`split_digest` hashes a split's prompts, families, rounded vertices, faces and
colours; ``tests/test_procedural.py`` pins the test split's digest, so a change of any family
(which would silently change the yardstick) fails the test suite and needs a new split name.

Prompts describe an object as a user would, naming its colours and parts, e.g. ``"a black
wooden chair with four thin legs, a solid back and a pink cushion"``; within a split no prompt
contains another (the exemplar prior matches prompts by containment; ``tests/test_procedural.py``).
Prior specs: ``exemplar:procedural-train`` and ``exemplar:procedural-test``
(:func:`procedural_library`); a folder called ``procedural-<other>`` still loads as a folder.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from sds3d.priors.exemplar_library import LibraryObject
from sds3d.priors.procedural_families import FAMILIES
from sds3d.priors.procedural_shapes import Part
from sds3d.types import SDS3DError

SPLITS: dict[str, tuple[int, ...]] = {"train": (0, 1), "test": (1000, 1001)}
"""Seeds of each split (every family); fixed for good."""
SPEC_PREFIX = "procedural-"
"""``exemplar:procedural-<split>`` names a split of this library."""
DIGEST_DECIMALS = 6
"""Vertices are rounded to this many decimals before hashing (float noise across machines)."""


@dataclass
class ProceduralObject:
    """One generated object: its prompt, family, seed and coloured parts in normalised
    coordinates (the same transform as the merged mesh: unit bounding sphere)."""

    prompt: str
    family: str
    seed: int
    parts: list[Part]

    def mesh(self) -> trimesh.Trimesh:
        """All parts merged into one vertex-coloured mesh."""
        meshes = []
        for p in self.parts:
            m = p.mesh.copy()
            m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=np.tile([*p.rgb, 255], (len(m.vertices), 1)).astype(np.uint8))
            meshes.append(m)
        return trimesh.util.concatenate(meshes)

    def library_object(self) -> LibraryObject:
        return LibraryObject(self.prompt, self.mesh(), family=self.family)


def family_rng(family: str, seed: int) -> np.random.Generator:
    """The random stream of one object: independent of Python's hash seed and of other families."""
    return np.random.default_rng([zlib.crc32(family.encode()), seed])


def generate_object(family: str, seed: int) -> ProceduralObject:
    """Build the object ``(family, seed)`` and normalise it (bounding-box centre to the origin,
    farthest vertex at distance 1), parts included."""
    if family not in FAMILIES:
        raise SDS3DError(f"unknown procedural family {family!r}; use one of: {', '.join(FAMILIES)}")
    prompt, parts = FAMILIES[family](family_rng(family, seed))
    lo, hi = trimesh.util.concatenate([p.mesh for p in parts]).bounds
    centre = (lo + hi) / 2.0  # the rule of normalize_mesh, applied to every part
    radius = max(float(np.linalg.norm(p.mesh.vertices - centre, axis=1).max()) for p in parts)
    for p in parts:
        p.mesh = p.mesh.copy()
        p.mesh.apply_translation(-centre)
        p.mesh.apply_scale(1.0 / radius)
    return ProceduralObject(prompt, family, seed, parts)


def split_objects(split: str) -> list[ProceduralObject]:
    """Every family's objects of a split, family-major, seeds ascending."""
    if split not in SPLITS:
        raise SDS3DError(f"unknown split {split!r} of the procedural library; use one of: {', '.join(SPLITS)}")
    return [generate_object(f, s) for f in FAMILIES for s in SPLITS[split]]


def procedural_library(split: str) -> list[LibraryObject]:
    """The split as exemplar library objects (with their ``family``)."""
    return [o.library_object() for o in split_objects(split)]


def split_digest(split: str) -> str:
    """SHA-256 of the split's prompts, families, rounded vertices, faces and vertex colours."""
    h = hashlib.sha256()
    for obj in split_objects(split):
        mesh = obj.mesh()
        h.update(f"{obj.prompt}|{obj.family}|{obj.seed}|".encode())
        h.update(np.round(mesh.vertices, DIGEST_DECIMALS).astype(np.float64).tobytes())
        h.update(np.ascontiguousarray(mesh.faces, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(mesh.visual.vertex_colors, dtype=np.uint8).tobytes())
    return h.hexdigest()


def parse_spec(name: str) -> str | None:
    """``"procedural-test"`` -> ``"test"``; None when ``name`` does not name this library."""
    if not name.startswith(SPEC_PREFIX):
        return None
    split = name[len(SPEC_PREFIX) :]
    if split not in SPLITS and Path(name).expanduser().is_dir():
        return None  # a folder of meshes that happens to be called procedural-...
    if split not in SPLITS:
        raise SDS3DError(f"--prior exemplar:{name}: unknown split {split!r}; use exemplar:procedural-train or exemplar:procedural-test")
    return split
