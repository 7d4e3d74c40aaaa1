import math

import torch

from sds3d.cameras import CameraConfig, eval_cameras, orbit_cameras, sample_cameras, view_buckets


def project(cams, points):
    """Pixel coordinates and camera depth of world points [N,3] in every camera."""
    p = torch.cat([points, torch.ones(len(points), 1)], -1)
    cam = torch.einsum("bij,nj->bni", cams.viewmats, p)[..., :3]
    uv = torch.einsum("bij,bnj->bni", cams.Ks, cam)
    return uv[..., :2] / uv[..., 2:], cam[..., 2]


def test_front_view_centres_a_point_on_plus_x():
    cams = orbit_cameras([0.0], [0.0], [3.0], [40.0], 64, 64)
    uv, z = project(cams, torch.tensor([[0.5, 0.0, 0.0]]))
    assert torch.allclose(uv[0, 0], torch.tensor([32.0, 32.0]), atol=1e-4)
    assert math.isclose(z[0, 0].item(), 2.5, rel_tol=1e-5)
    # +y appears on the right of the front view, +z (up) above the centre (smaller v).
    uv, _ = project(cams, torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, 0.5]]))
    assert uv[0, 0, 0] > 32 and abs(uv[0, 0, 1] - 32) < 1e-4
    assert uv[0, 1, 1] < 32 and abs(uv[0, 1, 0] - 32) < 1e-4


def test_positions_follow_the_spherical_formula():
    el, az, d = 30.0, 120.0, 2.5
    cams = orbit_cameras([el], [az], [d], [45.0], 32, 32)
    e, a = math.radians(el), math.radians(az)
    want = torch.tensor([d * math.cos(e) * math.cos(a), d * math.cos(e) * math.sin(a), d * math.sin(e)])
    assert torch.allclose(cams.positions()[0], want, atol=1e-5)
    # the camera looks at the origin: the origin projects to the image centre
    uv, z = project(cams, torch.zeros(1, 3))
    assert torch.allclose(uv[0, 0], torch.tensor([16.0, 16.0]), atol=1e-4) and z[0, 0] > 0


def test_opengl_camera_to_world_is_unit_norm_and_y_up():
    cams = orbit_cameras([0.0, 20.0], [0.0, 90.0], [3.0, 2.0], [40.0, 40.0], 16, 16)
    c2w = cams.c2w_opengl_normalized()
    assert torch.allclose(c2w[:, :3, 3].norm(dim=-1), torch.ones(2), atol=1e-6)
    # front camera: OpenGL +z (backward) points from the object to the camera (+x), +y is world up
    assert torch.allclose(c2w[0, :3, 2], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6)
    assert torch.allclose(c2w[0, :3, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)


def test_multi_view_sampler_groups_of_four():
    g = torch.Generator().manual_seed(0)
    cams = sample_cameras(CameraConfig(), 8, 32, 32, num_views=4, generator=g)
    az = cams.azimuth.view(2, 4)
    diffs = torch.remainder(az - az[:, :1], 360.0)
    assert torch.allclose(diffs, torch.tensor([0.0, 90.0, 180.0, 270.0]).expand(2, 4), atol=1e-3)
    for field in ("elevation", "distance", "fovy"):
        v = getattr(cams, field).view(2, 4)
        assert torch.equal(v, v[:, :1].expand(2, 4))
    lo, hi = CameraConfig().elevation_range
    assert ((cams.elevation >= lo) & (cams.elevation <= hi)).all()


def test_sampler_is_reproducible_with_a_generator():
    a = sample_cameras(CameraConfig(), 4, 16, 16, generator=torch.Generator().manual_seed(3))
    b = sample_cameras(CameraConfig(), 4, 16, 16, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.viewmats, b.viewmats)


def test_view_buckets_thresholds():
    el = torch.tensor([0.0, 0.0, 0.0, 0.0, 70.0, 0.0])
    az = torch.tensor([10.0, -44.0, 90.0, 170.0, 0.0, -150.0])
    assert view_buckets(el, az) == ["front", "front", "side", "back", "overhead", "back"]


def test_eval_cameras_start_at_front_and_resize_scales_intrinsics():
    cams = eval_cameras(CameraConfig(), 4, 64, 64)
    assert torch.allclose(cams.azimuth, torch.tensor([0.0, 90.0, -180.0, -90.0]))
    small = cams.resized(32, 32)
    assert torch.allclose(small.Ks[:, 0, 0], cams.Ks[:, 0, 0] / 2)
    o, d = small.rays()
    assert o.shape == (4, 32, 32, 3) and torch.allclose(d.norm(dim=-1), torch.ones(4, 32, 32), atol=1e-5)
