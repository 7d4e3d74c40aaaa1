"""The exemplar library: (prompt, coloured mesh) pairs and their cached ground-truth renders.

Meshes live in our world convention (+z up, front toward +x) and are normalised by one rule:
translate the axis-aligned bounding-box centre to the origin, then scale so the farthest
vertex is at distance exactly 1 (bounding-sphere radius 1 about that centre).

Built-in objects are made in code from trimesh primitives with vertex colours. Most have a
distinct front (the snowman's carrot nose, the duck's beak, the penguin's white belly, the
house's door, the mug's logo, the chair's open front with its backrest behind), so a prior
without view information produces visible Janus objects; the traffic cone is symmetric.

User libraries (``exemplar:DIR``): ``.glb/.gltf/.obj/.ply`` files in glTF convention (y up,
front toward +z) for every format, rotated on load by ``(x, y, z)_ours = (z, x, y)_gltf``
(glTF +z front -> our +x, glTF +y up -> our +z, glTF +x -> our +y; the inverse of
:data:`sds3d.export.writers.OURS_TO_GLTF`). Scenes are flattened to one mesh; a single
textured mesh keeps its ``TextureVisuals`` (the ray caster samples it), several meshes are
baked to vertex colours and concatenated. Prompts: the file stem with ``_`` as spaces, unless
``DIR/prompts.json`` maps file names (``"duck.glb": "a rubber duck"``) to prompts.

Renders (:func:`render_library`): each object ray-cast (:func:`sds3d.render.raycast.raycast_mesh`,
white background, Lambert headlight) from ``num_groups`` groups of 4 training cameras 90
degrees apart (``sample_cameras(camera_cfg, 4G, R, R, num_views=4)`` with a fixed seed), cached
on disk as uint8 keyed by a hash of the mesh content, resolution, cameras and code version.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from torch import Tensor

from sds3d.cameras import CameraConfig, Cameras, sample_cameras
from sds3d.checkpoint import atomic_write
from sds3d.render.raycast import raycast_mesh
from sds3d.types import SDS3DError

RENDER_VERSION = "2"
"""Bumped whenever the renders change for the same inputs (invalidates the cache)."""
CAMERA_SEED = 1234
"""Seed of the library's camera generator."""
MESH_SUFFIXES = (".glb", ".gltf", ".obj", ".ply")
GLTF_TO_OURS = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
"""Homogeneous rotation: ours (x, y, z) = glTF (z, x, y)."""
DEFAULT_CACHE = Path("~/.cache/sds3d/exemplar")


@dataclass
class LibraryObject:
    """One library entry: its prompt and its normalised mesh (our axes, unit bounding sphere)."""

    prompt: str
    mesh: trimesh.Trimesh
    family: str | None = None
    """The procedural family (``sds3d.priors.procedural``); None for built-in and folder objects."""


@dataclass
class LibraryRenders:
    """Renders of every object from the same cameras."""

    images: Tensor  # [N_obj, G, 4, 3, R, R] float32 in [-1, 1], on white
    alpha: Tensor  # [N_obj, G, 4, 1, R, R] float32 in [0, 1]: coverage, to composite on other backgrounds
    elevation: Tensor  # [G, 4] degrees
    azimuth: Tensor  # [G, 4] degrees
    prompts: list[str]


def normalize_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Copy centred on its bounding-box centre and scaled to bounding-sphere radius exactly 1."""
    out = mesh.copy()
    lo, hi = out.bounds
    out.apply_translation(-(lo + hi) / 2.0)
    radius = float(np.linalg.norm(out.vertices, axis=1).max())
    if radius <= 0:
        raise SDS3DError("a library mesh has zero size; give it some extent")
    out.apply_scale(1.0 / radius)
    return out


# ------------------------------------------------------------------------ built-in objects


def _part(mesh: trimesh.Trimesh, rgb: tuple[int, int, int], at: tuple[float, float, float] = (0, 0, 0)) -> trimesh.Trimesh:
    mesh.apply_translation(at)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile([*rgb, 255], (len(mesh.vertices), 1)).astype(np.uint8))
    return mesh


def _along(mesh: trimesh.Trimesh, axis: str) -> trimesh.Trimesh:
    """Turn a primitive built along +z so it points along +x, +y or -x."""
    angles = {"x": ([0, 1, 0], np.pi / 2), "-x": ([0, 1, 0], -np.pi / 2), "y": ([1, 0, 0], -np.pi / 2)}
    direction, angle = angles[axis]
    mesh.apply_transform(trimesh.transformations.rotation_matrix(angle, direction))
    return mesh


def _sphere(r: float, scale: tuple[float, float, float] = (1, 1, 1)) -> trimesh.Trimesh:
    s = trimesh.creation.icosphere(subdivisions=3, radius=r)
    s.apply_scale(scale)
    return s


def _box(x: float, y: float, z: float) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=(x, y, z))


def _cyl(r: float, h: float) -> trimesh.Trimesh:
    return trimesh.creation.cylinder(radius=r, height=h, sections=32)


def _cone(r: float, h: float) -> trimesh.Trimesh:
    return trimesh.creation.cone(radius=r, height=h, sections=32)


WHITE, BLACK, ORANGE, RED, YELLOW = (240, 240, 240), (25, 25, 25), (240, 120, 20), (200, 30, 30), (250, 210, 30)


def _snowman() -> list[trimesh.Trimesh]:
    return [
        _part(_sphere(0.5), WHITE, (0, 0, 0.5)),
        _part(_sphere(0.36), WHITE, (0, 0, 1.22)),
        _part(_sphere(0.26), WHITE, (0, 0, 1.76)),
        _part(_along(_cone(0.06, 0.35), "x"), ORANGE, (0.22, 0, 1.76)),
        _part(_sphere(0.04), BLACK, (0.21, 0.09, 1.86)),
        _part(_sphere(0.04), BLACK, (0.21, -0.09, 1.86)),
        _part(_sphere(0.045), BLACK, (0.35, 0, 1.3)),
        _part(_sphere(0.045), BLACK, (0.36, 0, 1.14)),
        _part(_cyl(0.33, 0.1), RED, (0, 0, 1.52)),
        _part(_cyl(0.2, 0.3), BLACK, (0, 0, 2.1)),
    ]


def _mug() -> list[trimesh.Trimesh]:
    handle = trimesh.creation.torus(major_radius=0.22, minor_radius=0.06, major_sections=32, minor_sections=12)
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))  # ring in the y-z plane
    return [
        _part(_cyl(0.45, 1.0), (40, 90, 200), (0, 0, 0.5)),
        _part(_cyl(0.4, 0.02), (60, 40, 30), (0, 0, 1.0)),  # coffee
        _part(handle, (40, 90, 200), (0, 0.5, 0.5)),
        _part(_along(_cyl(0.2, 0.04), "x"), YELLOW, (0.44, 0, 0.55)),  # logo on the front
        _part(_along(_cyl(0.08, 0.05), "x"), RED, (0.46, 0, 0.55)),
    ]


def _chair() -> list[trimesh.Trimesh]:
    wood, cushion = (130, 80, 40), (180, 30, 40)
    legs = [_part(_box(0.08, 0.08, 0.8), wood, (x, y, 0.4)) for x in (-0.35, 0.35) for y in (-0.35, 0.35)]
    return legs + [
        _part(_box(0.8, 0.8, 0.08), wood, (0, 0, 0.84)),
        _part(_box(0.7, 0.7, 0.06), cushion, (0.02, 0, 0.91)),
        _part(_box(0.08, 0.8, 0.9), wood, (-0.36, 0, 1.33)),  # backrest at the back (-x)
        _part(_box(0.04, 0.6, 0.3), (230, 200, 120), (-0.31, 0, 1.4)),
    ]


def _house() -> list[trimesh.Trimesh]:
    ridge = [(x, y, z) for y in (-0.7, 0.7) for x, z in ((-0.7, 0.0), (0.7, 0.0), (0.0, 0.6))]
    roof = trimesh.convex.convex_hull(np.array(ridge, dtype=np.float64))  # prism, ridge along y
    return [
        _part(_box(1.2, 1.2, 1.0), (235, 220, 180), (0, 0, 0.5)),
        _part(roof, RED, (0, 0, 1.0)),
        _part(_box(0.04, 0.3, 0.55), (110, 60, 20), (0.61, 0, 0.275)),  # door at the front
        _part(_box(0.04, 0.25, 0.25), (90, 160, 230), (0.61, 0.38, 0.6)),
        _part(_box(0.04, 0.25, 0.25), (90, 160, 230), (0.61, -0.38, 0.6)),
        _part(_box(0.2, 0.2, 0.5), (120, 120, 120), (-0.3, 0.35, 1.35)),  # chimney at the back
    ]


def _duck() -> list[trimesh.Trimesh]:
    return [
        _part(_sphere(0.5, (1.3, 1.0, 0.75)), YELLOW, (0, 0, 0.4)),
        _part(_sphere(0.32), YELLOW, (0.35, 0, 0.95)),
        _part(_along(_cone(0.12, 0.3), "x"), ORANGE, (0.6, 0, 0.92)),
        _part(_sphere(0.05), BLACK, (0.58, 0.14, 1.05)),
        _part(_sphere(0.05), BLACK, (0.58, -0.14, 1.05)),
        _part(_along(_cone(0.15, 0.3), "-x"), YELLOW, (-0.6, 0, 0.5)),  # tail
    ]


def _penguin() -> list[trimesh.Trimesh]:
    return [
        _part(_sphere(0.5, (0.9, 0.9, 1.3)), BLACK, (0, 0, 0.65)),
        _part(_sphere(0.4, (0.6, 0.9, 1.2)), WHITE, (0.22, 0, 0.6)),  # white belly to the front
        _part(_sphere(0.3), BLACK, (0, 0, 1.4)),
        _part(_sphere(0.2, (0.8, 1.0, 1.0)), WHITE, (0.16, 0, 1.4)),
        _part(_along(_cone(0.08, 0.25), "x"), ORANGE, (0.3, 0, 1.38)),
        _part(_sphere(0.1, (1.6, 1.0, 0.4)), ORANGE, (0.15, 0.18, 0.03)),
        _part(_sphere(0.1, (1.6, 1.0, 0.4)), ORANGE, (0.15, -0.18, 0.03)),
    ]


def _traffic_cone() -> list[trimesh.Trimesh]:
    return [
        _part(_box(0.9, 0.9, 0.08), BLACK, (0, 0, 0.04)),
        _part(_cone(0.35, 1.3), ORANGE, (0, 0, 0.08)),
        _part(_cyl(0.25, 0.16), WHITE, (0, 0, 0.55)),
        _part(_cyl(0.15, 0.12), WHITE, (0, 0, 0.95)),
    ]


BUILTIN = {
    "a snowman": _snowman,
    "a coffee mug": _mug,
    "a wooden chair": _chair,
    "a small house": _house,
    "a rubber duck": _duck,
    "a penguin": _penguin,
    "a traffic cone": _traffic_cone,
}


def builtin_library() -> list[LibraryObject]:
    """The built-in procedural objects, normalised, with vertex colours."""
    return [LibraryObject(p, normalize_mesh(trimesh.util.concatenate(make()))) for p, make in BUILTIN.items()]


# ------------------------------------------------------------------------ user libraries


def _load_mesh(path: Path) -> trimesh.Trimesh:
    try:
        loaded = trimesh.load(path, force="scene")
    except Exception as e:  # noqa: BLE001 - any parser failure means an unreadable file
        raise SDS3DError(f"cannot read library mesh {path}: {e}; export it again as .glb, .obj or .ply") from None
    meshes = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    if not meshes:
        raise SDS3DError(f"library file {path} holds no triangles; export a triangle mesh as .glb, .obj or .ply")
    if len(meshes) == 1:
        mesh = meshes[0]
    else:
        for m in meshes:
            if isinstance(m.visual, trimesh.visual.TextureVisuals):
                m.visual = m.visual.to_color()
            m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=m.visual.vertex_colors)
        mesh = trimesh.util.concatenate(meshes)
    mesh.apply_transform(GLTF_TO_OURS)
    return normalize_mesh(mesh)


def mesh_files(folder: Path) -> list[Path]:
    """The ``.glb/.gltf/.obj/.ply`` files of ``folder``, sorted by name (none when it is not a folder)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in MESH_SUFFIXES) if folder.is_dir() else []


def load_library_dir(directory: str | Path) -> list[LibraryObject]:
    """Every ``.glb/.gltf/.obj/.ply`` in ``directory`` (sorted by name) as a library object."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise SDS3DError(f"exemplar library folder {d} does not exist; pass --prior exemplar:DIR with a folder of meshes")
    files = mesh_files(d)
    if not files:
        raise SDS3DError(f"exemplar library folder {d} has no .glb/.gltf/.obj/.ply files; add meshes to it")
    names: dict[str, str] = {}
    if (d / "prompts.json").exists():
        try:
            names = json.loads((d / "prompts.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SDS3DError(f"cannot read {d / 'prompts.json'}: {e}; make it a JSON object of file name -> prompt") from None
        if not isinstance(names, dict):
            raise SDS3DError(f"{d / 'prompts.json'} must be a JSON object mapping file names to prompts")
    return [LibraryObject(str(names.get(p.name, p.stem.replace("_", " "))), _load_mesh(p)) for p in files]


# ------------------------------------------------------------------------ renders and cache


def library_cameras(num_groups: int, resolution: int, camera_cfg: CameraConfig = CameraConfig()) -> Cameras:
    """The library's cameras: ``num_groups`` groups of 4 training views 90 degrees apart."""
    gen = torch.Generator().manual_seed(CAMERA_SEED)
    return sample_cameras(camera_cfg, 4 * num_groups, resolution, resolution, num_views=4, generator=gen)


def mesh_key(mesh: trimesh.Trimesh) -> str:
    """Content hash of geometry and colours (vertex/face colours or texture and UVs)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(mesh.vertices, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(mesh.faces, dtype=np.int64).tobytes())
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        if visual.uv is not None:
            h.update(np.ascontiguousarray(visual.uv, dtype=np.float64).tobytes())
        image = getattr(visual.material, "image", None) or getattr(visual.material, "baseColorTexture", None)
        if image is not None:
            h.update(np.asarray(image.convert("RGBA")).tobytes())
        h.update(str(getattr(visual.material, "main_color", "")).encode())
    else:
        h.update(visual.kind.encode() if visual.kind else b"none")
        colors = visual.face_colors if visual.kind == "face" else visual.vertex_colors
        h.update(np.ascontiguousarray(colors).tobytes())
    return h.hexdigest()


def render_object(mesh: trimesh.Trimesh, cameras: Cameras, batch: int = 64) -> tuple[Tensor, Tensor]:
    """rgb [N,R,R,3] float32 in [0,1] (white background, Lambert headlight) and alpha [N,R,R,1]."""
    out = [raycast_mesh(mesh, cameras[i : i + batch], (1.0, 1.0, 1.0), "lambert")[:2] for i in range(0, len(cameras), batch)]
    return torch.cat([torch.as_tensor(o[0]).float() for o in out]), torch.cat([torch.as_tensor(o[1]).float() for o in out])


def render_library(
    objects: list[LibraryObject],
    resolution: int = 64,
    num_groups: int = 96,
    camera_cfg: CameraConfig = CameraConfig(),
    cache_dir: str | Path | None = DEFAULT_CACHE,
) -> LibraryRenders:
    """Render (or load from the cache) every object from the library cameras."""
    if not objects:
        raise SDS3DError("the exemplar library is empty; add meshes to the folder")
    cams = library_cameras(num_groups, resolution, camera_cfg)
    settings = f"{RENDER_VERSION}|{resolution}|{num_groups}|{CAMERA_SEED}|{camera_cfg!r}".encode()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    R = resolution
    # filled in place, one object at a time: a list then torch.stack would hold every image twice
    images = torch.empty(len(objects), num_groups, 4, 3, R, R)
    alphas = torch.empty(len(objects), num_groups, 4, 1, R, R)
    for i, obj in enumerate(objects):
        key = hashlib.sha256(mesh_key(obj.mesh).encode() + settings).hexdigest()[:32]
        path = cache / f"{key}.pt" if cache is not None else None
        rgba8 = None
        if path is not None and path.exists():
            try:
                rgba8 = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a damaged cache entry is simply rendered again
                rgba8 = None
        if rgba8 is None or rgba8.shape != (4 * num_groups, resolution, resolution, 4):
            rgb, alpha = render_object(obj.mesh, cams)
            rgba8 = (torch.cat([rgb, alpha], -1) * 255.0).round().to(torch.uint8)
            if path is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    buf = io.BytesIO()
                    torch.save(rgba8, buf)
                    atomic_write(path, lambda f: f.write(buf.getvalue()))
                except (OSError, SDS3DError):
                    pass  # an unwritable cache only costs time
        x = rgba8.float().div(255.0).permute(0, 3, 1, 2)  # [4G,4,R,R]
        images[i] = (x[:, :3] * 2.0 - 1.0).reshape(num_groups, 4, 3, R, R)
        alphas[i] = x[:, 3:].reshape(num_groups, 4, 1, R, R)
    return LibraryRenders(
        images=images,
        alpha=alphas,
        elevation=cams.elevation.reshape(num_groups, 4),
        azimuth=cams.azimuth.reshape(num_groups, 4),
        prompts=[o.prompt for o in objects],
    )
