"""Mesh files (glb/obj/ply) and the standard 3D Gaussian splatting .ply.

Axes. Our world is right-handed, +z up, front +x. glTF is +y up with the front facing +z
(and Blender's OBJ importer assumes the same), so ``mesh.glb`` and ``mesh.obj`` are written
in glTF axes with the rotation ``(x, y, z)_ours -> (y, z, x)_gltf`` (a cyclic permutation,
det +1: our front +x lands on glTF +z, our up +z on glTF +y, our +y (the viewer's right
when facing the front) on glTF +x). PLY has no axis convention; ``mesh.ply`` stays in our
native +z-up world (Blender's PLY importer assumes z up). ``gaussians.ply`` is written in the
axes splat viewers expect (``--export.splat-axes``, default y-down, :mod:`.splat_axes`, which
rotates means, quaternions and SH coefficients consistently) and records them in a header
comment ``comment sds3d axes <name>``. :func:`read_mesh` and :func:`read_splat_ply` undo the
rotations, so a file written here reloads in our world axes.

Colours. glb: linear float32 ``COLOR_0`` and a white metallic-0 PBR material (:mod:`.gltf`);
obj: sRGB ``v x y z r g b`` and ``mesh.mtl``; ply: sRGB uint8, what PLY readers assume.

Splat .ply (the INRIA 3DGS layout, Kerbl et al., "3D Gaussian Splatting for Real-Time
Radiance Field Rendering", SIGGRAPH 2023): binary little endian, one float32 ``vertex``
element with ``x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3``:
positions, zero normals, SH DC, the other SH coefficients channel-major (all K of red, then
green, then blue), opacity as a logit, log scales, and raw (unnormalized) wxyz quaternions,
exactly the pre-activation values of gsplat's ``splats`` ParameterDict (rotated into the file's axes).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import torch
import trimesh
from torch import Tensor

from sds3d.export.gltf import ROUGHNESS, accessor, glb_bytes, linear_to_srgb, read_glb
from sds3d.export.splat_axes import SPLAT_AXES, SplatAxes, axes_rotation, rotate_splats
from sds3d.types import SDS3DError

MeshFormat = Literal["glb", "obj", "ply"]

OURS_TO_GLTF = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
"""Homogeneous rotation: glTF (x, y, z) = ours (y, z, x)."""
GLTF_TO_OURS = OURS_TO_GLTF.T


def write_mesh(mesh: trimesh.Trimesh, out_dir: Path, formats: Sequence[MeshFormat], vertex_colored: trimesh.Trimesh | None = None) -> list[Path]:
    """Write ``mesh.<fmt>`` for every format; returns the paths written (obj: + .mtl, + .png if textured).

    ``mesh`` carries sRGB vertex colours or a texture; ``vertex_colored`` (same surface with vertex
    colours) is used for PLY, which has no textures. glb/obj get the PBR material of :mod:`.gltf`
    and smooth vertex normals; see the module docstring for axes and colour spaces.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for fmt in dict.fromkeys(formats):
        path = out_dir / f"mesh.{fmt}"
        if fmt == "glb":
            path.write_bytes(_glb(mesh))
            paths.append(path)
        elif fmt == "obj":
            paths += _write_obj(mesh, path)
        elif fmt == "ply":
            src = vertex_colored if vertex_colored is not None else mesh
            path.write_bytes(trimesh.exchange.ply.export_ply(src, encoding="binary", include_attributes=False))
            paths.append(path)
        else:
            raise SDS3DError(f"unknown mesh format {fmt!r}; use glb, obj or ply")
    return paths


def _in_gltf_axes(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, faces, smooth unit vertex normals) rotated into glTF axes."""
    rot = OURS_TO_GLTF[:3, :3]
    return np.asarray(mesh.vertices) @ rot.T, np.asarray(mesh.faces), np.asarray(mesh.vertex_normals) @ rot.T


def _srgb_colors(mesh: trimesh.Trimesh) -> np.ndarray | None:
    """Vertex colours [V,3] in [0,1] (sRGB display values), or None for a mesh without them."""
    visual = mesh.visual
    if not isinstance(visual, trimesh.visual.ColorVisuals) or visual.kind != "vertex":
        return None
    return np.asarray(visual.vertex_colors)[:, :3] / 255.0


def _textured(mesh: trimesh.Trimesh) -> bool:
    return isinstance(mesh.visual, trimesh.visual.TextureVisuals) and mesh.visual.uv is not None


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _glb(mesh: trimesh.Trimesh) -> bytes:
    verts, faces, normals = _in_gltf_axes(mesh)
    if _textured(mesh):
        return glb_bytes(verts, faces, normals, uvs=np.asarray(mesh.visual.uv), texture_png=_png(_texture_image(mesh)))
    return glb_bytes(verts, faces, normals, srgb_colors=_srgb_colors(mesh))


def _write_obj(mesh: trimesh.Trimesh, path: Path) -> list[Path]:
    """``mesh.obj`` (glTF axes; ``v x y z r g b`` sRGB vertex colours, or ``vt`` uvs; ``vn`` normals)
    with ``mesh.mtl`` (Kd 1 1 1, Ks 0, Pr 0.9, Pm 0; ``map_Kd mesh.png`` + the PNG when textured)."""
    verts, faces, normals = _in_gltf_axes(mesh)
    textured, colours = _textured(mesh), _srgb_colors(mesh)
    stem = path.stem
    mtl = [f"newmtl {stem}", "Kd 1 1 1", "Ks 0 0 0", "Ns 10", "d 1", "illum 1", f"Pr {ROUGHNESS}", "Pm 0"]
    written = [path, path.with_suffix(".mtl")]
    if textured:
        mtl.append(f"map_Kd {stem}.png")
        path.with_suffix(".png").write_bytes(_png(_texture_image(mesh)))
        written.append(path.with_suffix(".png"))
    path.with_suffix(".mtl").write_text("\n".join(mtl) + "\n")
    out = io.StringIO()
    out.write(f"# sds3d mesh: glTF axes (+y up, front +z), sRGB vertex colours\nmtllib {stem}.mtl\no {stem}\n")
    vdata = verts if colours is None else np.concatenate([verts, colours], axis=1)
    np.savetxt(out, vdata, fmt="v" + " %.8g" * vdata.shape[1])
    if textured:
        np.savetxt(out, np.asarray(mesh.visual.uv), fmt="vt %.6g %.6g")
    np.savetxt(out, normals, fmt="vn %.6g %.6g %.6g")
    out.write(f"usemtl {stem}\ns 1\n")
    f = faces + 1
    if textured:
        np.savetxt(out, np.repeat(f, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    else:
        np.savetxt(out, np.repeat(f, 2, axis=1), fmt="f %d//%d %d//%d %d//%d")
    path.write_text(out.getvalue())
    return written


def _texture_image(mesh: trimesh.Trimesh):
    mat = mesh.visual.material
    image = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
    if image is None:
        raise SDS3DError("the textured mesh has no texture image; re-run the export with --export.texture")
    return image


def read_mesh(path: str | Path) -> trimesh.Trimesh:
    """Load a glb/gltf/obj/ply as one Trimesh in our world axes (glTF and OBJ are rotated back).

    A .glb's ``COLOR_0`` (linear, by the glTF spec) comes back as sRGB uint8 display colours,
    as written; its first material is kept in ``mesh.metadata["material"]`` (the glTF dict).
    """
    path = Path(path)
    if not path.exists():
        raise SDS3DError(f"mesh file {path} does not exist; check the path")
    loaded = trimesh.load(path, process=False, force="scene")
    meshes = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if isinstance(loaded, trimesh.Scene) else [loaded]
    if not meshes:
        raise SDS3DError(f"{path} holds no triangle mesh; export one as glb, obj or ply")
    mesh = meshes[0] if len(meshes) == 1 else trimesh.util.concatenate(meshes)
    if path.suffix.lower() == ".obj" and isinstance(mesh.visual, trimesh.visual.TextureVisuals) and mesh.visual.uv is None:
        material = mesh.visual.material  # an untextured material hides the v-line colours: read them without it
        mesh = trimesh.load(path, process=False, force="mesh", skip_materials=True)
        mesh.metadata["material"] = material
    if path.suffix.lower() == ".glb":
        _glb_colours_and_material(path, mesh)
    if path.suffix.lower() in (".glb", ".gltf", ".obj"):
        mesh.apply_transform(GLTF_TO_OURS)
    return mesh


def _glb_colours_and_material(path: Path, mesh: trimesh.Trimesh) -> None:
    """Replace trimesh's 8-bit reading of a one-primitive glb's linear COLOR_0 by exact sRGB colours
    and keep the material (trimesh drops it for vertex-coloured meshes)."""
    doc, binary = read_glb(path)
    if doc.get("materials"):
        mesh.metadata["material"] = doc["materials"][0]
    prims = [p for m in doc.get("meshes", []) for p in m.get("primitives", [])]
    if len(prims) != 1 or "COLOR_0" not in prims[0]["attributes"]:
        return
    linear = accessor(doc, binary, prims[0]["attributes"]["COLOR_0"])
    if len(linear) != len(mesh.vertices):
        return
    rgb = np.round(linear_to_srgb(linear[:, :3]) * 255)
    alpha = np.round(np.clip(linear[:, 3:4], 0, 1) * 255) if linear.shape[1] == 4 else np.full((len(rgb), 1), 255.0)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.concatenate([rgb, alpha], axis=1).astype(np.uint8))


# ----------------------------------------------------------------------------- splat .ply

SPLAT_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def splat_ply_fields(num_rest: int) -> list[str]:
    """Property names of the standard 3DGS .ply, in file order (``num_rest`` = 3K f_rest entries)."""
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def write_splat_ply(splats: Mapping[str, Tensor], path: str | Path, axes: SplatAxes = "y-down") -> Path:
    """Write gsplat-named tensors (means [N,3], scales [N,3] log, quats [N,4] wxyz, opacities [N]
    logit, sh0 [N,1,3], shN [N,K,3]; our world axes) as a standard 3DGS .ply in ``axes``
    (:mod:`.splat_axes`); see the module docstring."""
    missing = [k for k in SPLAT_KEYS if k not in splats and k != "shN"]
    if missing:
        raise SDS3DError(f"the scene's splats lack {missing}; only Gaussian scenes can be saved as a splat .ply")
    t = {k: v.detach().float().cpu() for k, v in splats.items()}
    t = rotate_splats(t, axes_rotation(axes))
    n = t["means"].shape[0]
    sh_n = t.get("shN", torch.zeros(n, 0, 3))
    columns = [
        t["means"],
        torch.zeros(n, 3),
        t["sh0"].reshape(n, 3),
        sh_n.transpose(1, 2).reshape(n, -1),  # [N,3,K] -> channel-major
        t["opacities"].reshape(n, 1),
        t["scales"],
        t["quats"],
    ]
    data = torch.cat(columns, dim=1).numpy().astype("<f4")
    names = splat_ply_fields(sh_n.shape[1] * 3)
    header = f"ply\nformat binary_little_endian 1.0\ncomment sds3d axes {axes}\nelement vertex {n}\n"
    header += "".join(f"property float {name}\n" for name in names) + "end_header\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(np.ascontiguousarray(data).tobytes())
    return path


def read_splat_ply_header(path: str | Path) -> tuple[str, int, list[str], int, str | None]:
    """(format, vertex count, float property names, byte offset of the data, sds3d axes comment or None)."""
    with open(path, "rb") as f:
        raw = f.read(1 << 16)
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise SDS3DError(f"{path} is not a .ply file; pass a 3D Gaussian splatting .ply")
    lines = raw[:end].decode("ascii").splitlines()
    fmt, count, names, axes = "", 0, [], None
    for line in lines:
        parts = line.split()
        if parts[:3] == ["comment", "sds3d", "axes"] and len(parts) > 3:
            axes = parts[3]
        elif parts[:1] == ["format"]:
            fmt = parts[1]
        elif parts[:2] == ["element", "vertex"]:
            count = int(parts[2])
        elif parts[:1] == ["property"]:
            if parts[1] != "float":
                raise SDS3DError(f"{path}: property {parts[-1]} is {parts[1]}, expected float; pass a standard 3DGS .ply")
            names.append(parts[2])
    return fmt, count, names, end + len(b"end_header\n"), axes


def read_splat_ply(path: str | Path, axes: SplatAxes | None = None) -> dict[str, Tensor]:
    """Reload a standard 3DGS .ply into gsplat-named float32 tensors in our world axes (inverse of
    :func:`write_splat_ply`). ``axes``: the file's axes; default: its ``comment sds3d axes`` line,
    else z-up (files sds3d wrote before it had the option)."""
    fmt, n, names, offset, file_axes = read_splat_ply_header(path)
    axes = axes or file_axes or "z-up"  # type: ignore[assignment]
    if axes not in SPLAT_AXES:
        raise SDS3DError(f"{path}: unknown axes {axes!r} in its header; pass axes= one of {', '.join(SPLAT_AXES)}")
    if fmt != "binary_little_endian":
        raise SDS3DError(f"{path} is {fmt or 'an unknown format'}; only binary little-endian splat .ply files are read")
    num_rest = sum(name.startswith("f_rest_") for name in names)
    expected = splat_ply_fields(num_rest)
    if sorted(names) != sorted(expected) or num_rest % 3:
        raise SDS3DError(f"{path} lacks the standard 3DGS fields (x y z f_dc_* opacity scale_* rot_*); pass a splat .ply")
    data = np.fromfile(path, dtype="<f4", offset=offset, count=n * len(names)).reshape(n, len(names))
    col = {name: i for i, name in enumerate(names)}
    get = lambda keys: torch.from_numpy(data[:, [col[k] for k in keys]].copy())  # noqa: E731
    k = num_rest // 3
    splats = {
        "means": get(["x", "y", "z"]),
        "scales": get(["scale_0", "scale_1", "scale_2"]),
        "quats": get(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": get(["opacity"])[:, 0].contiguous(),
        "sh0": get(["f_dc_0", "f_dc_1", "f_dc_2"]).reshape(n, 1, 3),
        "shN": get([f"f_rest_{i}" for i in range(num_rest)]).reshape(n, 3, k).transpose(1, 2).contiguous(),
    }
    back = rotate_splats(splats, axes_rotation(axes).T)
    return {key: value.contiguous() for key, value in back.items()}
