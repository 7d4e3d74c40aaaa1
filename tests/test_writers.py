"""Mesh files as 3D tools read them: glTF material, normals, linear COLOR_0, bufferView targets; OBJ/MTL."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from sds3d.export.gltf import ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, accessor, linear_to_srgb, read_glb, srgb_to_linear
from sds3d.export.writers import OURS_TO_GLTF, read_mesh, write_mesh


def coloured_sphere(rgb: tuple[int, int, int] | None = None) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(2, radius=0.5)
    if rgb is None:
        colours = np.random.default_rng(0).integers(0, 256, (len(mesh.vertices), 3))
    else:
        colours = np.tile(rgb, (len(mesh.vertices), 1))
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.c_[colours, np.full(len(colours), 255)].astype(np.uint8))
    return mesh


def test_srgb_transfer_function_known_values():
    # IEC 61966-2-1: 0.5 -> 0.21404, the linear segment below 0.04045, 1 -> 1
    np.testing.assert_allclose(srgb_to_linear(np.array([0.0, 0.04, 0.5, 1.0])), [0.0, 0.04 / 12.92, 0.214041, 1.0], atol=1e-6)
    levels = np.arange(256) / 255.0
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(levels)), levels, atol=1e-12)


def test_glb_has_pbr_material_normals_linear_colours_and_targets(tmp_path):
    mesh = coloured_sphere((128, 3, 60))  # a dark channel: 8-bit linear would lose it
    (path,) = write_mesh(mesh, tmp_path, ["glb"])
    doc, binary = read_glb(path)
    (prim,) = doc["meshes"][0]["primitives"]
    pbr = doc["materials"][prim["material"]]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0 and pbr["roughnessFactor"] == 0.9 and pbr["baseColorFactor"] == [1, 1, 1, 1]
    normals = accessor(doc, binary, prim["attributes"]["NORMAL"])
    expected = np.asarray(mesh.vertex_normals) @ OURS_TO_GLTF[:3, :3].T
    np.testing.assert_allclose(normals, expected, atol=1e-6)  # smooth, unit, in glTF axes
    colour = doc["accessors"][prim["attributes"]["COLOR_0"]]
    assert colour["componentType"] == 5126  # float32
    linear = accessor(doc, binary, prim["attributes"]["COLOR_0"])
    np.testing.assert_allclose(linear[0], [0.2158605, 0.000910581, 0.0451862], rtol=1e-5)  # sRGB (128, 3, 60) linear
    targets = {doc["bufferViews"][doc["accessors"][i]["bufferView"]].get("target") for i in prim["attributes"].values()}
    assert targets == {ARRAY_BUFFER}
    assert doc["bufferViews"][doc["accessors"][prim["indices"]]["bufferView"]]["target"] == ELEMENT_ARRAY_BUFFER


def test_glb_reloads_display_colours_and_material(tmp_path):
    mesh = coloured_sphere()
    (path,) = write_mesh(mesh, tmp_path, ["glb"])
    back = read_mesh(path)
    np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-6)
    diff = np.abs(back.visual.vertex_colors[:, :3].astype(int) - mesh.visual.vertex_colors[:, :3].astype(int))
    assert diff.max() == 0  # float32 linear round-trips every 8-bit sRGB level exactly
    assert back.metadata["material"]["pbrMetallicRoughness"]["metallicFactor"] == 0.0
    raw = trimesh.load(path, force="mesh", process=False)  # another reader: normals as written
    np.testing.assert_allclose(raw.vertex_normals, np.asarray(mesh.vertex_normals) @ OURS_TO_GLTF[:3, :3].T, atol=1e-5)


def test_textured_glb_and_obj_reference_an_srgb_png(tmp_path):
    mesh = trimesh.creation.box()
    uv = np.random.default_rng(1).random((len(mesh.vertices), 2))
    image = Image.fromarray(np.full((16, 16, 3), (200, 30, 10), np.uint8))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, metallicFactor=0.0)
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    paths = write_mesh(mesh, tmp_path, ["glb", "obj"])
    assert sorted(p.name for p in paths) == ["mesh.glb", "mesh.mtl", "mesh.obj", "mesh.png"]
    doc, binary = read_glb(tmp_path / "mesh.glb")
    assert doc["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"] == {"index": 0}
    assert doc["images"][0]["mimeType"] == "image/png"
    (prim,) = doc["meshes"][0]["primitives"]
    assert "COLOR_0" not in prim["attributes"]  # the texture alone carries the colour
    np.testing.assert_allclose(accessor(doc, binary, prim["attributes"]["TEXCOORD_0"])[:, 1], 1 - uv[:, 1], atol=1e-6)
    mtl = (tmp_path / "mesh.mtl").read_text().splitlines()
    assert {"Kd 1 1 1", "Ks 0 0 0", "Pm 0", "map_Kd mesh.png"} <= set(mtl)
    assert np.asarray(Image.open(tmp_path / "mesh.png"))[0, 0].tolist() == [200, 30, 10]
    for name in ("mesh.glb", "mesh.obj"):
        back = read_mesh(tmp_path / name)
        np.testing.assert_allclose(back.vertices, mesh.vertices, atol=1e-6)


def test_obj_has_material_normals_and_srgb_vertex_colours(tmp_path):
    mesh = coloured_sphere()
    paths = write_mesh(mesh, tmp_path, ["obj", "ply"])
    assert [p.name for p in paths] == ["mesh.obj", "mesh.mtl", "mesh.ply"]
    text = (tmp_path / "mesh.obj").read_text()
    assert "mtllib mesh.mtl" in text and "usemtl mesh" in text
    assert text.count("\nvn ") == len(mesh.vertices)
    mtl = set((tmp_path / "mesh.mtl").read_text().splitlines())
    assert {"newmtl mesh", "Kd 1 1 1", "Ks 0 0 0", "Pm 0"} <= mtl and "map_Kd mesh.png" not in mtl
    for name in ("mesh.obj", "mesh.ply"):  # both keep sRGB display colours
        back = read_mesh(tmp_path / name)
        np.testing.assert_array_equal(back.visual.vertex_colors, mesh.visual.vertex_colors)
    ply = trimesh.load(tmp_path / "mesh.ply", process=False)  # z-up world axes
    np.testing.assert_allclose(ply.vertices, mesh.vertices, atol=1e-6)


@pytest.mark.parametrize("value", [0, 1, 2, 5, 10, 128, 254, 255])
def test_known_srgb_levels_round_trip(tmp_path, value):
    (path,) = write_mesh(coloured_sphere((value, value, value)), tmp_path, ["glb"])
    assert np.all(read_mesh(path).visual.vertex_colors[:, :3] == value)
