"""The standard 3D Gaussian splatting .ply: header fields, byte layout, exact reload, viewer axes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sds3d.export.splat_axes import SPLAT_AXES, matrix_to_quat, rotate_splats
from sds3d.export.writers import read_splat_ply, write_splat_ply
from sds3d.render.torch_rasterizer import quat_to_rotmat, rasterization
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
    assert lines[:4] == ["ply", "format binary_little_endian 1.0", "comment sds3d axes y-down", "element vertex 50"]
    props = [line.split() for line in lines[4:]]
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
    path = write_splat_ply(splats, tmp_path / "g.ply", axes="z-up")  # no rotation: the values as given
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


@pytest.mark.parametrize("sh_degree,axes", [(0, "z-up"), (3, "z-up"), (0, "y-down"), (3, "y-down"), (2, "y-up")])
def test_reload_gives_same_tensors(tmp_path, sh_degree, axes):
    splats = random_splats(33, sh_degree)
    params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in splats.items()})  # as scene.splats
    back = read_splat_ply(write_splat_ply(params, tmp_path / "g.ply", axes))  # the header names the axes
    assert set(back) == set(splats)
    exact = axes == "z-up"
    for key, value in splats.items():
        assert back[key].shape == value.shape and back[key].dtype == torch.float32
        torch.testing.assert_close(back[key], value, rtol=0, atol=0 if exact else 2e-6)
    params.load_state_dict({k: torch.nn.Parameter(v) for k, v in back.items()})  # refills a scene's splats


def test_reader_rejects_other_ply(tmp_path):
    path = tmp_path / "mesh.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n")
    with pytest.raises(SDS3DError):
        read_splat_ply(path)
    path.write_bytes(b"not a ply")
    with pytest.raises(SDS3DError):
        read_splat_ply(path)


def test_quaternion_of_each_axes_rotation():
    for rot in SPLAT_AXES.values():
        q = torch.as_tensor(matrix_to_quat(rot))[None]
        np.testing.assert_allclose(quat_to_rotmat(q)[0].numpy(), rot, atol=1e-12)


@pytest.mark.parametrize("axes,up", [("y-down", [0, -1, 0]), ("y-up", [0, 1, 0]), ("z-up", [0, 0, 1])])
def test_our_up_is_the_viewers_up(tmp_path, axes, up):
    splats = random_splats(2, sh_degree=1)
    splats["means"] = torch.tensor([[0.0, 0.0, 0.7], [0.5, 0.0, 0.0]])  # our +z (up), our +x (front)
    splats["quats"] = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2)
    splats["scales"] = torch.log(torch.tensor([[0.01, 0.01, 0.3]] * 2))  # long along our z
    path = write_splat_ply(splats, tmp_path / "g.ply", axes)
    raw = path.read_bytes()
    data = np.frombuffer(raw[raw.index(b"end_header\n") + 11 :], dtype="<f4").reshape(2, -1)
    np.testing.assert_allclose(data[0, 0:3], 0.7 * np.array(up), atol=1e-7)  # the Gaussian on top sits on the viewer's up
    long_axis = quat_to_rotmat(torch.from_numpy(data[0, -4:].copy())[None])[0, :, 2].numpy()
    np.testing.assert_allclose(np.abs(long_axis), np.abs(up), atol=1e-6)  # and stays long along the up axis
    if axes != "z-up":
        np.testing.assert_allclose(data[1, 0:3], [0.0, 0.0, 0.5], atol=1e-7)  # our front faces the viewer's +z


def _look_at(eye: np.ndarray) -> torch.Tensor:
    """OpenCV world->camera matrix at ``eye`` looking at the origin (x right, y down, z forward)."""
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])
    view = np.eye(4)
    view[:3, :3], view[:3, 3] = rot, -rot @ eye
    return torch.as_tensor(view, dtype=torch.float32)


def _render(splats: dict[str, torch.Tensor], viewmat: torch.Tensor) -> torch.Tensor:
    sh = torch.cat([splats["sh0"], splats["shN"]], 1)
    K = torch.tensor([[[80.0, 0, 48], [0, 80.0, 48], [0, 0, 1]]])
    image, _, _ = rasterization(
        splats["means"], splats["quats"], torch.exp(splats["scales"]), torch.sigmoid(splats["opacities"]), sh,
        viewmat[None], K, 96, 96, sh_degree=3, backgrounds=torch.ones(1, 3),
    )
    return image[0]


@pytest.mark.parametrize("axes", ["y-down", "y-up"])
def test_rotated_file_renders_the_same_from_the_rotated_camera(tmp_path, axes):
    """Anisotropic, rotated Gaussians with degree-3 SH: the file's scene seen from the camera turned
    the same way matches our scene; with the SH left unrotated it would not."""
    g = torch.Generator().manual_seed(3)
    n = 40
    splats = {
        "means": torch.randn(n, 3, generator=g) * 0.25,
        "scales": torch.log(torch.rand(n, 3, generator=g) * 0.12 + 0.02),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": torch.randn(n, generator=g) + 1.0,
        "sh0": torch.randn(n, 1, 3, generator=g) * 0.5,
        "shN": torch.randn(n, 15, 3, generator=g) * 0.4,
    }
    rot = SPLAT_AXES[axes]
    path = write_splat_ply(splats, tmp_path / "g.ply", axes)
    raw = read_splat_ply(path, axes="z-up")  # the file's values as a viewer reads them
    to_file = torch.eye(4)
    to_file[:3, :3] = torch.as_tensor(rot.T, dtype=torch.float32)
    unrotated_sh = dict(raw, shN=splats["shN"])
    for eye in ([2.5, 0.8, 0.9], [-1.2, 2.0, -0.7], [0.3, -2.2, 1.4]):
        view = _look_at(np.array(eye))
        ours = _render(splats, view)
        theirs = _render(raw, view @ to_file)  # same camera, turned into the file's axes
        mse = torch.mean((ours - theirs) ** 2).item()
        assert 10 * math.log10(1 / max(mse, 1e-12)) > 40.0
        wrong = torch.mean((ours - _render(unrotated_sh, view @ to_file)) ** 2).item()
        assert 10 * math.log10(1 / wrong) < 35.0  # the test can tell: SH must rotate too


def test_any_rotation_keeps_the_renders():
    """rotate_splats with a generic (not axis-permuting) rotation: same images from the turned camera."""
    g = torch.Generator().manual_seed(5)
    splats = random_splats(40, sh_degree=3, seed=5)
    splats["scales"] = torch.log(torch.rand(40, 3, generator=g) * 0.12 + 0.02)
    q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    rot = q * np.sign(np.linalg.det(q))
    turned = rotate_splats(splats, rot)
    to_turned = torch.eye(4)
    to_turned[:3, :3] = torch.as_tensor(rot.T, dtype=torch.float32)
    view = _look_at(np.array([2.0, -1.5, 1.0]))
    image = _render(splats, view)
    assert (image.min(-1).values < 0.9).float().mean() > 0.05  # not an empty frame (14% covered)
    mse = torch.mean((image - _render(turned, view @ to_turned)) ** 2).item()
    assert 10 * math.log10(1 / max(mse, 1e-12)) > 40.0
