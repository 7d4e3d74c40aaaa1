"""The Gaussian scene: rendering, fitting, densification with gsplat's strategy on the torch
backend, checkpoints that resume bit-identically, and the density/albedo export queries."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from sds3d.cameras import orbit_cameras
from sds3d.render.torch_rasterizer import SH_C0, quat_to_rotmat
from sds3d.scenes.gaussians import GaussianScene, GaussiansConfig
from sds3d.types import RenderOutput, Scene, SDS3DError

CPU = torch.device("cpu")
CAMS = orbit_cameras([10.0, 20.0, 0.0, 30.0], [0.0, 90.0, 180.0, -90.0], 2.5, 45.0, 32, 32)
WHITE = torch.ones(4, 3)


def small(**kw) -> GaussiansConfig:
    base = dict(num_init=300, init_scale=0.05, init_opacity=0.3, refine_start=10_000)
    return GaussiansConfig(**(base | kw))


def target_image() -> torch.Tensor:
    """Renders of a red ball: what the fitted scene should become."""
    torch.manual_seed(123)
    gt = small(init_opacity=0.8).setup(CPU)
    with torch.no_grad():
        gt.splats["sh0"].fill_((1.0 - 0.5) / SH_C0)
        gt.splats["sh0"][..., 1:] = (0.0 - 0.5) / SH_C0
        return gt.render(CAMS, WHITE).rgb


def train_step(scene: GaussianScene, step: int, target: torch.Tensor) -> float:
    out = scene.render(CAMS, WHITE)
    scene.pre_backward(step, out)
    loss = (out.rgb - target).square().mean()
    loss.backward()
    scene.optimizer_step(step, out)
    return loss.item()


def test_render_outputs() -> None:
    torch.manual_seed(0)
    scene = small().setup(CPU)
    assert isinstance(scene, Scene) and scene.num_primitives() == 300
    assert scene.splats["shN"].shape == (300, 0, 3) and scene.splats["sh0"].shape == (300, 1, 3)
    out = scene.render(CAMS, WHITE)
    assert isinstance(out, RenderOutput)
    assert out.rgb.shape == (4, 32, 32, 3) and out.alpha.shape == (4, 32, 32, 1) and out.depth.shape == (4, 32, 32, 1)
    assert 0 <= out.rgb.min() and out.rgb.max() <= 1
    fg = out.alpha[..., 0] > 0.5
    assert fg.float().mean() > 0.05 and (out.alpha < 0.01).float().mean() > 0.3  # an object on a background
    assert (out.depth[fg] - 2.5).abs().max() < 0.8  # cameras at distance 2.5, ball radius 0.5
    assert out.rgb[~fg].mean() > 0.9  # white background
    assert out.info["radii"].shape == (4, 300, 2)
    assert float(scene.regularization(out, 0, 10)) == 0.0
    assert small(scale_reg=1.0).setup(CPU).regularization(out, 0, 10).item() == pytest.approx(0.05, rel=1e-5)


def test_sh_degree_3_scene_renders() -> None:
    scene = small(sh_degree=3).setup(CPU)
    assert scene.splats["shN"].shape == (300, 15, 3)
    with torch.no_grad():
        scene.splats["shN"].normal_(0, 0.3)
    out = scene.render(CAMS, WHITE)
    assert torch.isfinite(out.rgb).all()


def test_fitting_lowers_loss() -> None:
    target = target_image()
    torch.manual_seed(0)
    scene = small(lr_colors=0.1, lr_opacities=0.1).setup(CPU)
    losses = [train_step(scene, i, target) for i in range(25)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_densification_changes_count_and_respects_cap() -> None:
    target = target_image()
    torch.manual_seed(0)
    cfg = small(refine_start=1, refine_every=3, refine_stop=100, grow_grad2d=1e-5, max_gaussians=1000)
    scene = cfg.setup(CPU)
    counts = []
    for i in range(1, 8):
        train_step(scene, i, target)
        counts.append(scene.num_primitives())
    assert counts[:2] == [300, 300] and counts[2] > 300, counts  # step 3 is the first refine step
    assert max(counts) <= 1000
    for key, opt in scene.optimizers.items():  # optimizer states follow the new tensors
        assert opt.param_groups[0]["params"][0] is scene.splats[key]
        assert opt.state[scene.splats[key]]["exp_avg"].shape == scene.splats[key].shape
    assert scene.strategy_state["count"].shape == (scene.num_primitives(),)

    torch.manual_seed(0)
    capped = dataclasses.replace(cfg, max_gaussians=350).setup(CPU)
    for i in range(1, 8):
        train_step(capped, i, target)
        assert capped.num_primitives() <= 350
    assert capped.num_primitives() > 300


def test_state_dict_resumes_bit_identically() -> None:
    target = target_image()
    torch.manual_seed(0)
    cfg = small(refine_start=1, refine_every=2, refine_stop=100, grow_grad2d=1e-5)
    scene = cfg.setup(CPU)
    for i in range(1, 4):
        train_step(scene, i, target)
    state = scene.state_dict()
    n_saved = scene.num_primitives()
    assert n_saved != 300

    torch.manual_seed(7)
    ref = [train_step(scene, i, target) for i in range(4, 7)]
    ref_params = {k: v.detach().clone() for k, v in scene.splats.items()}

    torch.manual_seed(99)
    resumed = cfg.setup(CPU)  # a different random init with a different count
    resumed.load_state_dict(state)
    assert resumed.num_primitives() == n_saved
    torch.manual_seed(7)
    again = [train_step(resumed, i, target) for i in range(4, 7)]
    assert again == ref
    for k, v in resumed.splats.items():
        assert torch.equal(v, ref_params[k]), k


def manual_scene() -> GaussianScene:
    cfg = small(num_init=3)
    splats = {
        "means": torch.tensor([[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0], [0.0, 0.0, 0.4]]),
        "scales": torch.log(torch.tensor([[0.05, 0.05, 0.05], [0.1, 0.02, 0.05], [0.03, 0.03, 0.03]])),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, -0.3, 0.2], [1.0, 0.0, 0.0, 0.0]]),
        "opacities": torch.logit(torch.tensor([0.8, 0.5, 0.9])),
        "sh0": ((torch.eye(3) - 0.5) / SH_C0)[:, None, :],
        "shN": torch.zeros(3, 0, 3),
    }
    return GaussianScene(cfg, CPU, splats)


def squared_mahalanobis(scene: GaussianScene, pts: torch.Tensor) -> torch.Tensor:
    """[P,N] squared distance of every point to every Gaussian, in units of its sigmas."""
    s = scene.splats
    rot, scales = quat_to_rotmat(s["quats"].detach()), torch.exp(s["scales"].detach())
    d = torch.einsum("pnj,nji->pni", pts[:, None] - s["means"].detach()[None], rot) / scales[None]
    return d.square().sum(-1)


def brute_force_density(scene: GaussianScene, pts: torch.Tensor) -> torch.Tensor:
    m2 = squared_mahalanobis(scene, pts)
    w = torch.sigmoid(scene.splats["opacities"].detach())[None] * torch.exp(-0.5 * m2) * (m2 <= 9)
    return w.sum(-1)


def test_density_and_albedo() -> None:
    scene = manual_scene()
    pts = torch.tensor([[0.3, 0.0, 0.0], [0.0, 0.0, 0.4], [2.0, 2.0, 2.0], [0.3, 0.0, 0.1], [0.0, 0.9, 0.0]])
    dens = scene.density(pts)
    assert dens[0] == pytest.approx(0.8, abs=1e-5) and dens[1] == pytest.approx(0.9, abs=1e-5)
    assert dens[2] == 0 and dens[4] == 0  # far away (and 2 sigma along z: 0.8 exp(-2))
    assert dens[3] == pytest.approx(0.8 * math.exp(-2), rel=1e-4)
    alb = scene.albedo(pts)
    assert torch.allclose(alb[0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-4)
    assert torch.allclose(alb[1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-4)
    assert torch.allclose(alb[2], torch.full((3,), 0.5))  # empty space: neutral grey

    torch.manual_seed(1)
    scene = small(num_init=400, init_scale=0.04).setup(CPU)
    with torch.no_grad():
        scene.splats["scales"].add_(torch.randn(400, 3) * 0.5)
        scene.splats["quats"].normal_()
    pts = torch.rand(3000, 3) * 1.4 - 0.7
    dense = brute_force_density(scene, pts)
    assert (dense > 0.1).float().mean() > 0.05
    assert torch.allclose(scene.density(pts), dense, atol=1e-5)
    assert torch.allclose(scene._field(pts, chunk_pairs=500)[0], dense, atol=1e-5)  # many chunks


def test_density_on_grid_matches_point_queries() -> None:
    """The splatted grid (the mesh export's path) equals density() at every node: anisotropic,
    rotated Gaussians of many sizes, some reaching past the grid's faces, one larger than it."""
    torch.manual_seed(2)
    scene = small(num_init=300, init_scale=0.03).setup(CPU)
    with torch.no_grad():
        scene.splats["scales"].add_(torch.randn(300, 3) * 0.6)
        scene.splats["scales"][0] = math.log(0.5)
        scene.splats["quats"].normal_()
    origin, voxel, counts = torch.tensor([-0.45, -0.4, -0.5]), 0.021, (40, 37, 45)
    grid = scene.density_on_grid(origin, voxel, counts)
    axes = [origin[a] + voxel * torch.arange(counts[a]) for a in range(3)]
    nodes = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    dense = brute_force_density(scene, nodes)
    assert grid.shape == counts and (dense > 0.1).float().mean() > 0.05
    # Nodes within float rounding of some Gaussian's 3-sigma cut (m2 = 9) may differ by its 1% tail.
    exact = ((squared_mahalanobis(scene, nodes) - 9).abs() > 1e-3).all(-1)
    assert exact.float().mean() > 0.99
    assert torch.allclose(grid.reshape(-1)[exact], dense[exact], atol=1e-5)
    assert torch.allclose(grid.reshape(-1), dense, atol=0.02)


def test_config_errors() -> None:
    with pytest.raises(SDS3DError, match="CUDA"):
        GaussiansConfig(backend="gsplat").setup(CPU)
    with pytest.raises(SDS3DError, match="sh-degree"):
        GaussiansConfig(sh_degree=4)
    with pytest.raises(SDS3DError, match="max-gaussians"):
        GaussiansConfig(num_init=10, max_gaussians=5)
    with pytest.raises(SDS3DError, match="init-color-spread"):
        GaussiansConfig(init_color_spread=1.5)


def test_init_color_spread() -> None:
    """Spread 1: random colours over [0, 1] (the default, unchanged RNG use); 0: all mid grey;
    0.2: within 0.5 +- 0.1. Positions do not depend on it."""
    colours = {}
    for spread in (1.0, 0.2, 0.0):
        torch.manual_seed(3)
        scene = small(num_init=500, init_color_spread=spread).setup(CPU)
        colours[spread] = 0.5 + SH_C0 * scene.splats["sh0"].detach()[:, 0]
        means = scene.splats["means"].detach()
        if spread == 1.0:
            first_means = means
        assert torch.equal(means, first_means)
    assert colours[1.0].min() < 0.02 and colours[1.0].max() > 0.98
    assert torch.allclose(colours[0.0], torch.full_like(colours[0.0], 0.5), atol=1e-6)
    assert (colours[0.2] - 0.5).abs().max() <= 0.1 + 1e-6 and (colours[0.2] - 0.5).abs().max() > 0.09


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat kernels)")
def test_cuda_scene_matches_torch_backend(exact_float32: None) -> None:
    torch.manual_seed(0)
    gpu = small().setup(torch.device("cuda"))
    cpu = GaussianScene(small(), CPU, {k: v.detach().cpu() for k, v in gpu.splats.items()})
    a = gpu.render(CAMS.to("cuda"), WHITE.cuda())
    b = cpu.render(CAMS, WHITE)
    assert (a.rgb.cpu() - b.rgb).abs().max() < 1e-4 and (a.alpha.cpu() - b.alpha).abs().max() < 1e-4
    assert (a.info["radii"].cpu() - b.info["radii"]).abs().max() <= 1


def test_opacity_entropy_starts_late_and_makes_each_gaussian_opaque_or_gone() -> None:
    """The per-Gaussian opacity entropy is off before --gaussians.opacity-entropy-from, then
    w * mean H(o); minimizing it moves every opacity away from 0.5 (to 0 or 1)."""
    torch.manual_seed(0)
    scene = small(opacity_entropy=2.0, opacity_entropy_from=0.5, lr_opacities=0.1).setup(CPU)
    with torch.no_grad():
        scene.splats["opacities"].uniform_(-2.0, 2.0)  # opacities 0.12 .. 0.88
    out = scene.render(CAMS, WHITE)
    o = torch.sigmoid(scene.splats["opacities"].detach())
    entropy = float((-(o * o.log() + (1 - o) * (1 - o).log())).mean())
    assert float(scene.regularization(out, 4, 10)) == 0.0
    assert float(scene.regularization(out, 5, 10).detach()) == pytest.approx(2.0 * entropy, rel=1e-5)

    def undecided(s: GaussianScene) -> float:
        op = torch.sigmoid(s.splats["opacities"].detach())
        return float(((op > 0.1) & (op < 0.9)).float().mean())

    assert undecided(scene) > 0.9
    for step in range(60):
        out = scene.render(CAMS, WHITE)
        scene.regularization(out, 9, 10).backward()
        for opt in scene.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert undecided(scene) < 0.1
    with pytest.raises(SDS3DError, match="opacity-entropy"):
        small(opacity_entropy=-1.0)


def test_alpha_entropy_is_scheduled_and_makes_renders_solid() -> None:
    """The opacity entropy grows linearly over the run and pushes half-transparent pixels to 0 or 1."""
    torch.manual_seed(0)
    scene = small(alpha_entropy=(0.0, 10.0), lr_opacities=0.1).setup(CPU)
    out = scene.render(CAMS, WHITE)
    a = out.alpha.detach().clamp(1e-5, 1 - 1e-5)
    entropy = float((-(a * a.log() + (1 - a) * (1 - a).log())).mean())
    assert float(scene.regularization(out, 0, 11)) == 0.0
    assert float(scene.regularization(out, 5, 11).detach()) == pytest.approx(5.0 * entropy, rel=1e-5)
    assert float(scene.regularization(out, 10, 11).detach()) == pytest.approx(10.0 * entropy, rel=1e-5)

    def mid_fraction(s: GaussianScene) -> float:
        alpha = s.render(CAMS, WHITE).alpha
        return float(((alpha > 0.1) & (alpha < 0.9)).float().mean())

    before = mid_fraction(scene)
    for step in range(40):
        out = scene.render(CAMS, WHITE)
        scene.pre_backward(step, out)
        scene.regularization(out, 40, 41).backward()
        scene.optimizer_step(step, out)
    assert mid_fraction(scene) < 0.5 * before


def test_lowpass_eps2d_keeps_the_training_low_pass_at_its_angular_size() -> None:
    from sds3d.scenes.gaussians import EPS2D, lowpass_eps2d

    assert lowpass_eps2d(100.0, None) == EPS2D
    assert lowpass_eps2d(100.0, 100.0) == pytest.approx(0.3)
    assert lowpass_eps2d(400.0, 100.0) == pytest.approx(0.3 * 16)
    assert lowpass_eps2d(50.0, 100.0) == pytest.approx(0.3)  # smaller renders keep gsplat's own


def test_training_lowpass_renders_tiny_gaussians_at_every_size_as_in_training() -> None:
    """Gaussians far smaller than a training pixel: at 4x the training size their coverage (in
    training pixels) stays what training saw with the low-pass, and erodes to speckle without."""
    gen = torch.Generator().manual_seed(0)
    n = 40
    splats = {
        "means": (torch.rand(n, 3, generator=gen) - 0.5) * 0.8,
        "scales": torch.full((n, 3), math.log(1e-4)),
        "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
        "opacities": torch.full((n,), math.log(0.9 / 0.1)),
        "sh0": torch.zeros(n, 1, 3),
        "shN": torch.zeros(n, 0, 3),
    }
    cams = lambda size: orbit_cameras([15.0], [30.0], 3.0, 40.0, size, size)  # noqa: E731
    train_focal = cams(32).Ks[0, 0, 0].item()
    coverage = {}
    for lowpass in (True, False):
        scene = GaussianScene(small(num_init=n, training_lowpass=lowpass), CPU, splats, train_focal=train_focal)
        with torch.no_grad():
            small_alpha = scene.render(cams(32), torch.ones(1, 3)).alpha.sum().item()
            large_alpha = scene.render(cams(128), torch.ones(1, 3)).alpha.sum().item() / 16  # in 32 px pixels
        coverage[lowpass] = (small_alpha, large_alpha)
    (train_lp, big_lp), (train_off, big_off) = coverage[True], coverage[False]
    assert train_lp == pytest.approx(train_off, rel=1e-6)  # the training size is unchanged
    assert big_lp == pytest.approx(train_lp, rel=0.1)
    assert big_off < 0.2 * train_lp


def test_viewer_splats_fold_the_low_pass_into_each_gaussian() -> None:
    """What a standard splat renderer (gsplat's own 0.3 px low-pass) shows of the file matches the
    low-passed renders at 4x the training size, and the export density widens by the same sigma."""
    gen = torch.Generator().manual_seed(1)
    n = 60
    splats = {
        "means": (torch.rand(n, 3, generator=gen) - 0.5) * 0.6,
        "scales": torch.log(torch.rand(n, 3, generator=gen) * 0.02 + 1e-3),
        "quats": torch.randn(n, 4, generator=gen),
        "opacities": torch.randn(n, generator=gen),
        "sh0": torch.randn(n, 1, 3, generator=gen),
        "shN": torch.zeros(n, 0, 3),
    }
    cams = lambda size: orbit_cameras([15.0, 30.0], [30.0, 200.0], 3.0, 40.0, size, size)  # noqa: E731
    scene = GaussianScene(small(num_init=n), CPU, splats, train_focal=cams(32).Ks[0, 0, 0].item(), view_distance=3.0)
    sigma = scene.lowpass_sigma()
    assert sigma == pytest.approx(math.sqrt(0.3) * 3.0 / cams(32).Ks[0, 0, 0].item())
    viewer = GaussianScene(small(num_init=n, training_lowpass=False), CPU, scene.viewer_splats())
    raw = GaussianScene(small(num_init=n, training_lowpass=False), CPU, splats)
    with torch.no_grad():
        ours = scene.render(cams(128), torch.ones(2, 3)).rgb
        mse_viewer = (viewer.render(cams(128), torch.ones(2, 3)).rgb - ours).square().mean().item()
        mse_raw = (raw.render(cams(128), torch.ones(2, 3)).rgb - ours).square().mean().item()
    assert -10 * math.log10(mse_viewer) > 35 and mse_raw > 10 * mse_viewer
    widened = torch.sqrt(torch.exp(splats["scales"]) ** 2 + sigma**2)
    torch.testing.assert_close(torch.exp(scene.viewer_splats()["scales"]), widened)
    far = splats["means"][:1] + torch.tensor([[0.0, 0.0, 0.03]])  # outside the tiny Gaussians' reach
    assert scene.density(far).item() > raw.density(far).item()
