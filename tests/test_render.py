"""The torch Gaussian rasterizer against the naive dense reference, a literal per-pixel loop,
autograd's gradcheck, camera conventions, and (with CUDA) gsplat itself."""

from __future__ import annotations

import time

import pytest
import torch

from sds3d.bench.rasterizer import RasterizerBenchConfig, naive_rasterize, random_scene, run_rasterizer_bench
from sds3d.cameras import orbit_cameras
from sds3d.render import TORCH_TILE_SIZE, kernels, rasterize_gaussians, resolve_backend
from sds3d.render.torch_rasterizer import rasterization
from sds3d.types import SDS3DError


def dense_scene(n: int, seed: int, sh_degree: int | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """Many large, fairly opaque Gaussians: heavy overlap, saturated pixels, early stops."""
    s = random_scene(n, sh_degree=sh_degree, seed=seed, scale=(0.03, 0.25), dtype=dtype)
    s["opacities"] = 0.3 + 0.7 * s["opacities"]
    return s


def cams(n: int = 3, width: int = 40, height: int = 32, dtype: torch.dtype = torch.float32):
    c = orbit_cameras([10.0, 35.0, -20.0][:n], [0.0, 130.0, -75.0][:n], 2.8, 45.0, width, height)
    return c.viewmats.to(dtype), c.Ks.to(dtype)


def pixel_loop(means2d, conics, colors, opacities, depths, width, height, background):
    """The CUDA kernel's per-pixel loop, literally (one camera, all Gaussians valid)."""
    order = torch.argsort(depths).tolist()
    img = torch.zeros(height, width, colors.shape[-1], dtype=torch.float64)
    alpha_img = torch.zeros(height, width, 1, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            T, acc = 1.0, torch.zeros(colors.shape[-1], dtype=torch.float64)
            for g in order:
                dx, dy = means2d[g, 0] - (j + 0.5), means2d[g, 1] - (i + 0.5)
                a, b, c = conics[g]
                sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                alpha = min(0.999, float(opacities[g] * torch.exp(-sigma)))
                if sigma < 0 or alpha < 1 / 255:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    break
                acc += colors[g] * alpha * T
                T *= 1 - alpha
            img[i, j] = acc + T * background
            alpha_img[i, j] = 1 - T
    return img, alpha_img


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_naive_reference(packed: bool, seed: int) -> None:
    s = dense_scene(600, seed)
    viewmats, Ks = cams()
    bg = torch.rand(3, 3, generator=torch.Generator().manual_seed(seed))
    ref_rgb, ref_a = naive_rasterize(**s, viewmats=viewmats, Ks=Ks, width=40, height=32, backgrounds=bg)
    rgb, a, meta = rasterization(**s, viewmats=viewmats, Ks=Ks, width=40, height=32, backgrounds=bg, packed=packed, tile_size=8)
    assert rgb.shape == (3, 32, 40, 3) and a.shape == (3, 32, 40, 1)
    assert (ref_a > 0.9).float().mean() > 0.2, "the scene should saturate many pixels"
    assert (rgb - ref_rgb).abs().max() < 1e-4
    assert (a - ref_a).abs().max() < 1e-4


@pytest.mark.parametrize("sh_degree", [0, 1, 3])
def test_matches_naive_reference_sh(sh_degree: int) -> None:
    s = dense_scene(400, seed=sh_degree, sh_degree=sh_degree)
    viewmats, Ks = cams()
    ref_rgb, _ = naive_rasterize(**s, viewmats=viewmats, Ks=Ks, width=40, height=32, sh_degree=sh_degree)
    rgb, _, _ = rasterization(**s, viewmats=viewmats, Ks=Ks, width=40, height=32, sh_degree=sh_degree, tile_size=16)
    assert (rgb - ref_rgb).abs().max() < 1e-4
    # view dependence: degree > 0 changes colours with the camera
    if sh_degree > 0:
        s0 = dict(s, colors=s["colors"][:, :1])
        rgb0, _, _ = rasterization(**s0, viewmats=viewmats, Ks=Ks, width=40, height=32, sh_degree=0)
        assert (rgb - rgb0).abs().max() > 0.05


def test_naive_reference_matches_literal_pixel_loop() -> None:
    s = dense_scene(40, seed=3, dtype=torch.float64)
    s["opacities"] = s["opacities"].clamp(0.6, 1.0)  # deep stacks: exercises the 1e-4 stop
    viewmats, Ks = cams(1, 12, 10, torch.float64)
    bg = torch.tensor([[0.2, 0.5, 0.9]], dtype=torch.float64)
    ref, ref_a = naive_rasterize(**s, viewmats=viewmats, Ks=Ks, width=12, height=10, backgrounds=bg)
    _, _, meta = rasterization(**s, viewmats=viewmats, Ks=Ks, width=12, height=10, packed=False)
    assert (meta["radii"] > 0).all(), "all Gaussians in view for the literal loop"
    loop, loop_a = pixel_loop(meta["means2d"][0], meta["conics"][0], s["colors"], meta["opacities"][0], meta["depths"][0], 12, 10, bg[0])
    assert (ref_a > 0.999).any(), "some pixels should hit the transmittance stop"
    assert (ref[0] - loop).abs().max() < 1e-10 and (ref_a[0] - loop_a).abs().max() < 1e-10


def test_gradcheck_float64() -> None:
    # Two large Gaussians on an 8x8 image: every alpha stays inside (1/255, 0.999) and far
    # from the stop, so the render is smooth in all parameters.
    g = torch.Generator().manual_seed(0)
    means = (0.15 * torch.randn(2, 3, generator=g)).double().requires_grad_()
    quats = torch.randn(2, 4, generator=g).double().requires_grad_()
    scales = (0.4 + 0.3 * torch.rand(2, 3, generator=g)).double().requires_grad_()
    opac = torch.tensor([0.5, 0.6], dtype=torch.float64, requires_grad=True)
    colors = torch.rand(2, 3, generator=g).double().requires_grad_()
    viewmats, Ks = cams(2, 8, 8, torch.float64)
    Ks[:, 0, 0] *= 4  # zoom in: 5-10 px sigmas on an 8x8 image
    Ks[:, 1, 1] *= 4

    def render(m, q, sc, o, c):
        rgb, a, _ = rasterization(m, q, sc, o, c, viewmats, Ks, 8, 8, packed=False, tile_size=8)
        return torch.cat([rgb, a], -1)

    out = render(means, quats, scales, opac, colors)
    assert out[..., 3].min() > 0.3
    assert torch.autograd.gradcheck(render, (means, quats, scales, opac, colors), eps=1e-6, atol=1e-6, fast_mode=True)


def test_background_compositing() -> None:
    s = dense_scene(300, seed=4)
    viewmats, Ks = cams(2)
    bg = torch.tensor([[1.0, 0.0, 0.5], [0.1, 0.2, 0.3]])
    black, a, _ = rasterization(**s, viewmats=viewmats, Ks=Ks, width=40, height=32)
    over, a2, _ = rasterization(**s, viewmats=viewmats, Ks=Ks, width=40, height=32, backgrounds=bg)
    assert torch.allclose(over, black + (1 - a) * bg[:, None, None], atol=1e-6) and torch.equal(a, a2)
    assert (a < 1e-6).any() and (a > 0.5).any()
    # Everything behind the camera: the background alone.
    behind = dict(s, means=s["means"] + 10 * torch.tensor([1.0, 0.0, 0.0]))
    fv, fK = cams(1)
    empty, ea, meta = rasterization(**behind, viewmats=fv, Ks=fK, width=40, height=32, backgrounds=bg[:1])
    assert len(meta["gaussian_ids"]) == 0 and torch.allclose(empty, bg[:1, None, None].expand_as(empty)) and ea.abs().max() == 0


def test_front_camera_convention() -> None:
    cam = orbit_cameras([0.0], [0.0], 3.0, 40.0, 33, 33)  # azimuth 0 = front, on the +x axis
    means = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 0.6]])
    ones = torch.ones(3)
    rgb, a, meta = rasterization(
        means, torch.tensor([[1.0, 0, 0, 0]]).repeat(3, 1), torch.full((3, 3), 0.05), ones * 0.9, torch.eye(3),
        cam.viewmats, cam.Ks, 33, 33, packed=False,
    )
    m2d = meta["means2d"][0]
    assert torch.allclose(m2d[0], torch.tensor([16.5, 16.5]), atol=1e-4)  # +x: image centre
    assert m2d[1, 0] > 20 and abs(m2d[1, 1] - 16.5) < 1e-3  # +y: right of centre
    assert m2d[2, 1] < 13 and abs(m2d[2, 0] - 16.5) < 1e-3  # +z (up): above centre
    assert rgb[0, 16, 16].argmax() == 0 and a[0, 16, 16, 0] > 0.8


def test_expected_depth_and_meta_for_strategy() -> None:
    s = dense_scene(200, seed=5)
    viewmats, Ks = cams(2)
    params = {k: v.clone().requires_grad_() for k, v in s.items()}
    out, a, meta = rasterization(**params, viewmats=viewmats, Ks=Ks, width=40, height=32, packed=False, render_mode="RGB+ED")
    assert out.shape[-1] == 4
    d = out[..., 3][a[..., 0] > 0.5]
    dist = torch.linalg.inv(viewmats)[:, :3, 3].norm(dim=-1)
    assert d.min() > dist.min() - 1.0 and d.max() < dist.max() + 1.0  # the ball of radius 0.5 (+ tails)
    for key in ("means2d", "radii", "width", "height", "n_cameras", "gaussian_ids", "depths", "conics", "opacities"):
        assert key in meta
    assert meta["radii"].shape == (2, 200, 2) and meta["radii"].dtype == torch.int32
    meta["means2d"].retain_grad()
    out[..., :3].sum().backward()
    g = meta["means2d"].grad
    visible = (meta["radii"] > 0).all(-1)
    assert g.shape == (2, 200, 2) and g[visible].abs().sum() > 0 and g[~visible].abs().sum() == 0
    assert all(params[k].grad is not None and params[k].grad.abs().sum() > 0 for k in params)


def test_backend_switch(monkeypatch) -> None:
    monkeypatch.setattr(kernels, "load_backend", lambda lib: object())  # kernels load (see test_kernels.py)
    kernels.reset()
    assert resolve_backend("auto", False) == "torch" and resolve_backend("auto", True) == "gsplat"
    kernels.reset()
    with pytest.raises(SDS3DError, match="CUDA"):
        resolve_backend("gsplat", False)
    s = dense_scene(100, seed=6)
    viewmats, Ks = cams(1)
    rgb, _, meta = rasterize_gaussians(**s, viewmats=viewmats, Ks=Ks, width=40, height=32)
    ref, _, _ = rasterization(**s, viewmats=viewmats, Ks=Ks, width=40, height=32)
    assert torch.allclose(rgb, ref, atol=1e-6) and meta["tile_size"] == TORCH_TILE_SIZE


def test_bench_table_and_json(tmp_path, capsys) -> None:
    path = tmp_path / "r.json"
    res = run_rasterizer_bench(RasterizerBenchConfig(gaussians=64, views=1, size=16, repeats=1, json_out=str(path)))
    assert "fwd_bwd" in capsys.readouterr().out and path.exists()
    assert all(res[k] > 0 for k in ("naive_fwd", "torch_fwd", "naive_fwd_bwd", "torch_fwd_bwd"))


def test_contention_table_counts_the_busy_process(capsys) -> None:
    before = torch.get_num_threads()
    res = run_rasterizer_bench(RasterizerBenchConfig(gaussians=64, views=1, size=16, repeats=1, contention=True))
    assert "busy / busy 1-thr" in capsys.readouterr().out and torch.get_num_threads() == before
    assert res["idle_1_threads"] == res["busy_1_threads"] == 1 and all(res[f"{l}_{n}"] > 0 for l in ("idle", "busy") for n in ("1", "all", "auto"))
    assert res["busy_auto_threads"] <= max(1, res["idle_all_threads"] - 1)  # the busy child's core is not used


@pytest.mark.slow
def test_speed_vs_naive() -> None:
    s = random_scene(4096)
    c = orbit_cameras([15.0] * 4, [0.0, 90.0, 180.0, 270.0], 3.25, 42.5, 64, 64)

    def timed(fn) -> float:
        p = {k: v.clone().requires_grad_() for k, v in s.items()}
        t0 = time.perf_counter()
        fn(p)[0].square().mean().backward()
        return time.perf_counter() - t0

    fast = min(timed(lambda p: rasterize_gaussians(**p, viewmats=c.viewmats, Ks=c.Ks, width=64, height=64, packed=False)) for _ in range(3))
    naive = timed(lambda p: naive_rasterize(**p, viewmats=c.viewmats, Ks=c.Ks, width=64, height=64))
    assert fast < 1.0 and naive / fast > 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat kernels)")
@pytest.mark.parametrize("sh_degree", [None, 3])
def test_cuda_parity_with_gsplat(sh_degree: int | None, exact_float32: None) -> None:
    s = {k: v.cuda() for k, v in dense_scene(2000, seed=7, sh_degree=sh_degree).items()}
    viewmats, Ks = (v.cuda() for v in cams(3, 64, 48))
    bg = torch.rand(3, 3, device="cuda")
    outs = {}
    for backend in ("gsplat", "torch"):
        p = {k: v.clone().requires_grad_() for k, v in s.items()}
        rgb, a, meta = rasterize_gaussians(
            **p, viewmats=viewmats, Ks=Ks, width=64, height=48, sh_degree=sh_degree, backgrounds=bg,
            packed=False, render_mode="RGB+ED", backend=backend,
        )
        meta["means2d"].retain_grad()
        (rgb[..., :3] * torch.linspace(0, 1, 64, device="cuda")[:, None]).sum().backward()
        outs[backend] = (rgb, a, meta, {k: v.grad for k, v in p.items()})
    (r1, a1, m1, g1), (r2, a2, m2, g2) = outs["gsplat"], outs["torch"]
    assert (r1[..., :3] - r2[..., :3]).abs().max() < 1e-4 and (a1 - a2).abs().max() < 1e-4
    # radii are ceil()s of float32 values: allow a rare off-by-one from operation order
    assert (m1["radii"] - m2["radii"]).abs().max() <= 1 and (m1["radii"] != m2["radii"]).float().mean() < 1e-3
    vis = (m1["radii"] > 0).all(-1)
    assert torch.allclose(m1["means2d"][vis], m2["means2d"][vis], atol=1e-3)
    assert torch.allclose(m1["means2d"].grad[vis], m2["means2d"].grad[vis], rtol=1e-2, atol=1e-3)
    for k in g1:
        assert torch.allclose(g1[k], g2[k], rtol=1e-2, atol=1e-3), k
