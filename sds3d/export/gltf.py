"""Binary glTF 2.0 (.glb) of one triangle mesh with a PBR material, written from numpy arrays.

Layout (Khronos glTF 2.0 spec, section 4.4 "GLB File Format Specification"): a 12-byte header
(magic ``glTF``, version 2, total length), a JSON chunk padded with spaces and a BIN chunk padded
with zeros to 4 bytes. One scene, one node, one mesh with one triangle primitive:

* ``POSITION`` float32 VEC3 (with min/max, as the spec requires), ``NORMAL`` float32 VEC3
  (smooth unit vertex normals), ``COLOR_0`` float32 VEC3 **linear** colour (spec 3.7.2.1: vertex
  colours are linear; our colours are sRGB display values, converted with the exact sRGB transfer
  function, IEC 61966-2-1; float32 keeps dark colours exact, unlike 8 bits), or ``TEXCOORD_0``
  float32 VEC2 with a ``baseColorTexture`` (an sRGB PNG, as spec 3.9.2 requires; glTF's uv origin
  is the image's top left, trimesh's the bottom left, so v is flipped), indices uint32;
  vertex data in bufferViews with target ARRAY_BUFFER (34962), indices ELEMENT_ARRAY_BUFFER (34963).
* material ``pbrMetallicRoughness``: baseColorFactor white (so the colour is exactly the vertex
  colours or the texture), metallicFactor 0 (the glTF default of 1 shows a dark mirror-like metal),
  roughnessFactor 0.9 (a matte, slightly glossy surface).

:func:`read_glb` parses the two chunks back and :func:`accessor` returns an accessor's values.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from sds3d.types import SDS3DError

ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963
FLOAT, UNSIGNED_INT, UNSIGNED_SHORT, UNSIGNED_BYTE = 5126, 5125, 5123, 5121
ROUGHNESS = 0.9
_COMPONENT = {FLOAT: "<f4", UNSIGNED_INT: "<u4", UNSIGNED_SHORT: "<u2", UNSIGNED_BYTE: "u1", 5122: "<i2", 5120: "i1"}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB display values in [0, 1] -> linear light (IEC 61966-2-1)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB display values (inverse of :func:`srgb_to_linear`)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def material(textured: bool) -> dict[str, Any]:
    """The PBR material of every mesh we write (module docstring)."""
    pbr: dict[str, Any] = {"baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": ROUGHNESS}
    if textured:
        pbr["baseColorTexture"] = {"index": 0}
    return {"name": "mesh", "pbrMetallicRoughness": pbr}


def glb_bytes(
    positions: np.ndarray,
    faces: np.ndarray,
    normals: np.ndarray,
    srgb_colors: np.ndarray | None = None,
    uvs: np.ndarray | None = None,
    texture_png: bytes | None = None,
) -> bytes:
    """GLB of one mesh (already in glTF axes): positions [V,3], faces [F,3], unit normals [V,3],
    and either sRGB vertex colours [V,3] in [0,1] or uvs [V,2] (trimesh's origin) + a PNG."""
    if (uvs is None) != (texture_png is None):
        raise SDS3DError("a textured glTF needs both uvs and a texture image; re-run the export with --export.texture")
    blob = bytearray()
    views: list[dict[str, Any]] = []
    accessors: list[dict[str, Any]] = []

    def view(data: bytes, target: int | None) -> int:
        blob.extend(b"\0" * (-len(blob) % 4))
        entry: dict[str, Any] = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target is not None:
            entry["target"] = target
        views.append(entry)
        blob.extend(data)
        return len(views) - 1

    def add(values: np.ndarray, kind: str, ctype: int, target: int, bounds: bool = False) -> int:
        values = np.ascontiguousarray(values, dtype=_COMPONENT[ctype])
        acc: dict[str, Any] = {"bufferView": view(values.tobytes(), target), "componentType": ctype, "count": len(values), "type": kind}
        if bounds:
            acc["min"], acc["max"] = values.min(axis=0).tolist(), values.max(axis=0).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    normals = np.asarray(normals, dtype=np.float64)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.where(length > 1e-12, normals / np.maximum(length, 1e-12), [0.0, 1.0, 0.0])  # no zero normals
    attributes = {
        "POSITION": add(positions, "VEC3", FLOAT, ARRAY_BUFFER, bounds=True),
        "NORMAL": add(normals, "VEC3", FLOAT, ARRAY_BUFFER),
    }
    doc: dict[str, Any] = {"asset": {"version": "2.0", "generator": "sds3d"}}
    if uvs is not None:
        uv = np.array(uvs, dtype=np.float64)
        uv[:, 1] = 1.0 - uv[:, 1]
        attributes["TEXCOORD_0"] = add(uv, "VEC2", FLOAT, ARRAY_BUFFER)
        doc["images"] = [{"bufferView": view(texture_png, None), "mimeType": "image/png"}]  # type: ignore[arg-type]
        doc["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]
        doc["textures"] = [{"sampler": 0, "source": 0}]
    elif srgb_colors is not None:
        attributes["COLOR_0"] = add(srgb_to_linear(srgb_colors), "VEC3", FLOAT, ARRAY_BUFFER)
    indices = add(np.asarray(faces).reshape(-1), "SCALAR", UNSIGNED_INT, ELEMENT_ARRAY_BUFFER)
    doc.update(
        scene=0,
        scenes=[{"nodes": [0]}],
        nodes=[{"mesh": 0, "name": "mesh"}],
        meshes=[{"name": "mesh", "primitives": [{"attributes": attributes, "indices": indices, "material": 0, "mode": 4}]}],
        materials=[material(uvs is not None)],
        accessors=accessors,
        bufferViews=views,
        buffers=[{"byteLength": len(blob) + (-len(blob) % 4)}],
    )
    blob.extend(b"\0" * (-len(blob) % 4))
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    out = io.BytesIO()
    out.write(struct.pack("<4sII", b"glTF", 2, total))
    out.write(struct.pack("<I4s", len(text), b"JSON") + text)
    out.write(struct.pack("<I4s", len(blob), b"BIN\0") + bytes(blob))
    return out.getvalue()


def read_glb(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """(JSON document, BIN chunk) of a .glb file."""
    raw = Path(path).read_bytes()
    if len(raw) < 20 or raw[:4] != b"glTF":
        raise SDS3DError(f"{path} is not a binary glTF (.glb) file; pass a .glb")
    length, kind = struct.unpack_from("<I4s", raw, 12)
    if kind != b"JSON":
        raise SDS3DError(f"{path}: the first GLB chunk is not JSON; the file is damaged, re-export it")
    doc = json.loads(raw[20 : 20 + length])
    rest = 20 + length
    binary = b""
    if rest + 8 <= len(raw):
        blen, bkind = struct.unpack_from("<I4s", raw, rest)
        if bkind == b"BIN\0":
            binary = raw[rest + 8 : rest + 8 + blen]
    return doc, binary


def accessor(doc: dict[str, Any], binary: bytes, index: int) -> np.ndarray:
    """Values of accessor ``index`` as float64 [count, width] (normalized integers scaled to [0, 1])."""
    acc = doc["accessors"][index]
    bv = doc["bufferViews"][acc["bufferView"]]
    dtype = np.dtype(_COMPONENT[acc["componentType"]])
    width = _WIDTH[acc["type"]]
    start = bv.get("byteOffset", 0) + acc.get("byteOffset", 0)
    stride = bv.get("byteStride", width * dtype.itemsize)
    rows = np.ndarray((acc["count"], width), dtype=dtype, buffer=binary, offset=start, strides=(stride, dtype.itemsize))
    values = rows.astype(np.float64)
    if acc.get("normalized") and dtype.kind == "u":
        values /= float(np.iinfo(dtype).max)
    return values
