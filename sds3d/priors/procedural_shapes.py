"""Building blocks of the procedural exemplar families: coloured parts, primitives, a palette.

World convention of the exemplar library: +z up, the object's front toward +x, the ground at
``z = 0`` (the library normalises every object afterwards, so absolute sizes do not matter).

A :class:`Part` is one watertight or open triangle mesh with one RGB colour and a ``kind``:
``"thin"`` (a stick or ring whose thickness is a small fraction of the object: legs, handles,
stems, axles, poles), ``"flat"`` (a plate or leaf) or ``""``. The kinds are labels the tests
check against the geometry (thickness ``4 V / A``: the diameter of a long cylinder, the side
of a long square bar), not inputs of any method.

Colours come from :data:`PALETTE` (named, so prompts can say them) with a per-channel jitter
of at most :data:`JITTER` drawn from the family's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

Vec = tuple[float, float, float]
RGB = tuple[int, int, int]

PALETTE: dict[str, RGB] = {
    "red": (200, 35, 35),
    "orange": (235, 125, 25),
    "yellow": (240, 205, 40),
    "green": (50, 160, 60),
    "teal": (30, 150, 150),
    "blue": (40, 80, 200),
    "purple": (120, 50, 170),
    "pink": (235, 120, 170),
    "brown": (125, 75, 40),
    "black": (30, 30, 30),
    "grey": (130, 130, 135),
    "white": (235, 235, 235),
}
JITTER = 12
"""Largest per-channel change of a palette colour."""


@dataclass
class Part:
    """One coloured piece of a procedural object."""

    name: str
    mesh: trimesh.Trimesh
    rgb: RGB
    kind: str = ""


def colour(rng: np.random.Generator, names: tuple[str, ...] | None = None) -> tuple[str, RGB]:
    """A palette colour (from ``names`` if given) with jitter: (name, rgb)."""
    options = names or tuple(PALETTE)
    name = options[int(rng.integers(len(options)))]
    base = np.array(PALETTE[name]) + rng.integers(-JITTER, JITTER + 1, size=3)
    return name, tuple(int(c) for c in np.clip(base, 0, 255))  # type: ignore[return-value]


def other_colour(rng: np.random.Generator, *avoid: str) -> RGB:
    """A palette colour whose name is none of ``avoid``."""
    return colour(rng, tuple(n for n in PALETTE if n not in avoid))[1]


def cname(rgb: RGB) -> str:
    """The palette name nearest to ``rgb`` (for prompts: colours drawn with :func:`other_colour`)."""
    return min(PALETTE, key=lambda n: sum((a - b) ** 2 for a, b in zip(PALETTE[n], rgb)))


def u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform in [lo, hi)."""
    return float(rng.uniform(lo, hi))


def _moved(mesh: trimesh.Trimesh, at: Vec) -> trimesh.Trimesh:
    mesh.apply_translation(at)
    return mesh


_TURN = {"x": ([0, 1, 0], np.pi / 2), "y": ([1, 0, 0], -np.pi / 2), "z": ([0, 0, 1], 0.0)}


def _along(mesh: trimesh.Trimesh, axis: str) -> trimesh.Trimesh:
    """A primitive built along +z turned to point along +x, +y or +z."""
    direction, angle = _TURN[axis]
    if angle:
        mesh.apply_transform(trimesh.transformations.rotation_matrix(angle, direction))
    return mesh


def box(ex: float, ey: float, ez: float, at: Vec = (0, 0, 0)) -> trimesh.Trimesh:
    """Axis-aligned box of extents (ex, ey, ez) centred at ``at``."""
    return _moved(trimesh.creation.box(extents=(ex, ey, ez)), at)


def cyl(r: float, h: float, at: Vec = (0, 0, 0), axis: str = "z", sections: int = 32) -> trimesh.Trimesh:
    """Cylinder of radius r and length h along ``axis``, centred at ``at``."""
    return _moved(_along(trimesh.creation.cylinder(radius=r, height=h, sections=sections), axis), at)


def rod(p0: Vec, p1: Vec, r: float, sections: int = 16) -> trimesh.Trimesh:
    """Cylinder of radius r from point p0 to point p1."""
    return trimesh.creation.cylinder(radius=r, segment=np.array([p0, p1], dtype=np.float64), sections=sections)


def cone(r: float, h: float, at: Vec = (0, 0, 0), axis: str = "z") -> trimesh.Trimesh:
    """Cone with its base (radius r) at ``at`` and its tip h along ``axis``."""
    return _moved(_along(trimesh.creation.cone(radius=r, height=h, sections=32), axis), at)


def sphere(r: float, at: Vec = (0, 0, 0), scale: Vec = (1, 1, 1), subdivisions: int = 3) -> trimesh.Trimesh:
    """Icosphere of radius r scaled per axis, centred at ``at``."""
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=r)
    s.apply_scale(scale)
    return _moved(s, at)


def torus(major: float, minor: float, at: Vec = (0, 0, 0), normal: str = "z") -> trimesh.Trimesh:
    """Ring of radius ``major`` and tube radius ``minor`` whose plane is normal to ``normal``."""
    t = trimesh.creation.torus(major_radius=major, minor_radius=minor, major_sections=32, minor_sections=12)
    return _moved(_along(t, normal), at)


def lathe(profile: list[tuple[float, float]], at: Vec = (0, 0, 0), sections: int = 40) -> trimesh.Trimesh:
    """Surface of revolution about +z of the (radius, height) polyline ``profile``; closed
    (watertight) when the polyline starts and ends on the axis, open otherwise."""
    return _moved(trimesh.creation.revolve(np.array(profile, dtype=np.float64), sections=sections), at)


def shell(outer: list[tuple[float, float]], wall: float, at: Vec = (0, 0, 0)) -> trimesh.Trimesh:
    """Hollow vessel: the outer (radius, height) wall from the bottom centre (r = 0) to the rim,
    and the same wall ``wall`` inside, back down to the axis (an open top: a concavity)."""
    inner = [(max(r - wall, 0.0), z + wall) for r, z in outer[1:]]
    rim = (outer[-1][0] - wall, outer[-1][1])
    profile = outer + [rim] + inner[-2::-1] + [(0.0, outer[0][1] + wall)]
    return lathe(profile, at)


def rotated(mesh: trimesh.Trimesh, angle_deg: float, axis: Vec, about: Vec = (0, 0, 0)) -> trimesh.Trimesh:
    """The mesh rotated by ``angle_deg`` about the line through ``about`` along ``axis``."""
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.radians(angle_deg), axis, about))
    return mesh


def thickness(mesh: trimesh.Trimesh) -> float:
    """``4 V / A``: the diameter of a long cylinder, the side of a long square bar, twice the
    thickness of a wide plate (meaningful for watertight meshes only)."""
    return float(4.0 * abs(mesh.volume) / mesh.area)


def length(mesh: trimesh.Trimesh) -> float:
    """Longest extent of the mesh's oriented bounding box."""
    return float(np.max(mesh.bounding_box_oriented.primitive.extents))
