"""The standard 3D Gaussian splatting .ply: header fields, byte layout, exact reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sds3d.export.marching import scene_bounds
from sds3d.export.writers import read_splat_ply, write_splat_ply
from sds3d.types import SDS3DError


def random_splats(n: int, sh_degree: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2 - 1
    return {
        "means": torch.randn(n, 3, generator=g) * 0.3,
        "scales": torch.randn(n, 3, generator=g) - 4.0,
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, k, 3, generator=g),
    }


def header_lines(path) -> list[str]:
    raw = path.read_bytes()
    return raw[: raw.index(b"end_header\n")].decode("ascii").splitlines()


def test_header_has_standard_fields_in_order(tmp_path):
    splats = random_splats(50, sh_degree=3)
    path = write_splat_ply(splats, tmp_path / "gaussians.ply")
    lines = header_lines(path)
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 50"]
    props = [line.split() for line in lines[3:]]
    assert all(p[:2] == ["property", "float"] for p in props)
    names = [p[2] for p in props]
    expected = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(45)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert names == expected
    header_size = len("\n".join(lines)) + len("\nend_header\n")
    assert path.stat().st_size == header_size + 50 * len(expected) * 4


def test_values_stored_as_3dgs_stores_them(tmp_path):
    splats = random_splats(7, sh_degree=1)
    path = write_splat_ply(splats, tmp_path / "g.ply")
    raw = path.read_bytes()
    data = np.frombuffer(raw[raw.index(b"end_header\n") + 11 :], dtype="<f4").reshape(7, -1)
    np.testing.assert_array_equal(data[:, 0:3], splats["means"].numpy())
    np.testing.assert_array_equal(data[:, 3:6], 0.0)  # normals
    np.testing.assert_array_equal(data[:, 6:9], splats["sh0"][:, 0].numpy())
    # f_rest channel-major: the K=3 red coefficients, then green, then blue
    np.testing.assert_array_equal(data[:, 9:12], splats["shN"][:, :, 0].numpy())
    np.testing.assert_array_equal(data[:, 15:18], splats["shN"][:, :, 2].numpy())
    np.testing.assert_array_equal(data[:, 18], splats["opacities"].numpy())  # logit
    np.testing.assert_array_equal(data[:, 19:22], splats["scales"].numpy())  # log
    np.testing.assert_array_equal(data[:, 22:26], splats["quats"].numpy())  # wxyz


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_reload_gives_same_tensors(tmp_path, sh_degree):
    splats = random_splats(33, sh_degree)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in splats.items()})  # as scene.splats
    back = read_splat_ply(write_splat_ply(params, tmp_path / "g.ply"))
    assert set(back) == set(splats)
    for key, value in splats.items():
        assert back[key].shape == value.shape and back[key].dtype == torch.float32
        torch.testing.assert_close(back[key], value, rtol=0, atol=0)
    params.load_state_dict({k: torch.nn.Parameter(v) for k, v in back.items()})  # refills a scene's splats


def test_reader_rejects_other_ply(tmp_path):
    path = tmp_path / "mesh.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(SDS3DError):
        read_splat_ply(path)
    path.write_bytes(b"not a ply")
    with pytest.raises(SDS3DError):
        read_splat_ply(path)


def test_bounds_of_gaussian_scene():
    class Splatted:
        splats = {
            "means": torch.tensor([[0.2, 0.0, 0.0], [-0.1, 0.3, 0.0], [5.0, 5.0, 5.0]]),
            "scales": torch.log(torch.full((3, 3), 0.01)),
            "quats": torch.tensor([[1.0, 0, 0, 0]] * 3),
            "opacities": torch.tensor([2.0, 2.0, -20.0]),  # the far one is transparent
        }

    lo, hi = scene_bounds(Splatted())
    np.testing.assert_allclose(lo, [-0.13, -0.03, -0.03], atol=1e-6)
    np.testing.assert_allclose(hi, [0.23, 0.33, 0.03], atol=1e-6)
