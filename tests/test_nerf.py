"""NeRF scene: dense compositing vs a hand-written one, the density blob, shading normals,
regularizers, fitting, chunking, resume; CUDA occupancy-grid path vs the dense path."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from sds3d.cameras import orbit_cameras
from sds3d.render.nerf_render import dense_intervals, render_rays_dense, sphere_bounds
from sds3d.scenes.hashgrid import HashGridConfig
from sds3d.recipes import EXEMPLAR_NERF
from sds3d.scenes.nerf import NerfConfig, NerfScene, trunc_exp
from sds3d.types import Scene

TINY_GRID = HashGridConfig(n_levels=4, features_per_level=2, log2_hashmap_size=10, base_resolution=8, per_level_scale=1.5)


def _scene(seed: int = 0, device: str = "cpu", **kw) -> NerfScene:
    torch.manual_seed(seed)
    base = dict(grid=TINY_GRID, hidden_dim=16, num_samples=32, albedo_warmup_steps=0)
    base.update(kw)
    return NerfConfig(**base).setup(torch.device(device))


def _cams(n: int = 2, size: int = 16):
    return orbit_cameras([10.0, 30.0][:n], [0.0, 120.0][:n], 3.0, 40.0, size, size)


def _ball_field(radius: float, sigma: float, color: tuple[float, float, float]):
    def field_fn(x: torch.Tensor, ray_indices: torch.Tensor):
        s = torch.where(x.norm(dim=-1) < radius, sigma, 0.0)
        return s, torch.tensor(color).expand(x.shape[0], 3), None

    return field_fn


# ----------------------------------------------------------------------------- dense path


def test_sphere_bounds() -> None:
    o = torch.tensor([[0.0, 0.0, -3.0], [0.0, 0.6, -3.0], [0.0, 2.0, -3.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    t0, t1 = sphere_bounds(o, d, 1.0)
    torch.testing.assert_close(t0, torch.tensor([2.0, 3 - 0.8, 0.0, 0.0]))
    torch.testing.assert_close(t1, torch.tensor([4.0, 3 + 0.8, 0.0, 1.0]))


def test_dense_matches_analytic_constant_density_sphere() -> None:
    rho, sigma, S = 0.5, 3.0, 64
    b = torch.tensor([0.0, 0.2, 0.35, 0.49, 0.7])  # impact parameters; the last misses the ball
    o = torch.stack([torch.full_like(b, -3.0), b, torch.zeros_like(b)], -1)
    d = torch.tensor([[1.0, 0.0, 0.0]]).expand_as(o)
    out = render_rays_dense(_ball_field(rho, sigma, (0.2, 0.4, 0.6)), o, d, 1.0, S, stratified=False)
    chord = 2 * (rho**2 - b**2).clamp_min(0).sqrt()
    expected = 1 - torch.exp(-sigma * chord)
    # The centre ray's bins align with the ball's surface: exact.
    assert abs(out.opacity[0, 0].item() - expected[0].item()) < 1e-5
    # Off-centre rays: quadrature error of at most one bin's worth of optical depth.
    for i in range(len(b)):
        t0, t1 = sphere_bounds(o[i : i + 1], d[i : i + 1], 1.0)
        bin_len = float(t1 - t0) / S
        assert abs(out.opacity[i, 0].item() - expected[i].item()) <= sigma * bin_len + 1e-5
    assert out.opacity[4, 0] == 0
    torch.testing.assert_close(out.rgb, torch.tensor([0.2, 0.4, 0.6]) * out.opacity)
    # Expected distance of the centre ray: the density-weighted mean of t over [2.5, 3.5].
    t = np.linspace(2.5, 3.5, 100001)
    w = sigma * np.exp(-sigma * (t - 2.5))
    assert abs(out.depth[0, 0].item() - float(np.trapezoid(w * t, t) / np.trapezoid(w, t))) < 2e-3


def test_dense_matches_hand_written_compositing() -> None:
    torch.manual_seed(0)
    o = torch.randn(20, 3)
    o = 3.0 * o / o.norm(dim=-1, keepdim=True)
    d = -o / 3.0 + 0.2 * torch.randn(20, 3)
    d = d / d.norm(dim=-1, keepdim=True)

    def field_fn(x, ray_indices):  # smooth density and colour
        s = 4.0 * torch.exp(-4 * (x**2).sum(-1))
        return s, torch.sigmoid(x), None

    out = render_rays_dense(field_fn, o, d, 1.0, 32, stratified=False)
    ts, te, tm = (v.numpy().astype(np.float64) for v in dense_intervals(o, d, 1.0, 32, stratified=False))
    x = o.numpy()[:, None] + tm[..., None] * d.numpy()[:, None]
    sig = 4.0 * np.exp(-4 * (x**2).sum(-1))
    alpha = 1 - np.exp(-sig * (te - ts))
    trans = np.concatenate([np.ones((20, 1)), np.cumprod(1 - alpha, axis=1)[:, :-1]], 1)
    w = trans * alpha
    rgb = (w[..., None] / (1 + np.exp(-x))).sum(1)
    np.testing.assert_allclose(out.opacity[:, 0].numpy(), w.sum(1), atol=1e-5)
    np.testing.assert_allclose(out.rgb.numpy(), rgb, atol=1e-5)
    np.testing.assert_allclose(out.depth[:, 0].numpy(), (w * tm).sum(1) / np.maximum(w.sum(1), 1e-6), atol=1e-4)


def test_stratified_samples_stay_in_their_bins() -> None:
    o = torch.tensor([[0.0, 0.0, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]])
    ts, te, tm = dense_intervals(o, d, 1.0, 8, stratified=True)
    assert ((tm >= ts) & (tm <= te)).all()
    assert not torch.allclose(tm, 0.5 * (ts + te))
    _, _, mid = dense_intervals(o, d, 1.0, 8, stratified=False)
    torch.testing.assert_close(mid, 0.5 * (ts + te))


# ----------------------------------------------------------------------------- the scene


def test_blob_initial_field_is_a_ball_and_scene_protocol() -> None:
    scene = _scene()
    assert isinstance(scene, Scene)
    scene.set_training(False)
    with torch.no_grad():
        out = scene.render(_cams(1, 16), torch.tensor([[0.0, 1.0, 0.0]]))
    assert out.rgb.shape == (1, 16, 16, 3) and out.alpha.shape == (1, 16, 16, 1) and out.normal.shape == (1, 16, 16, 3)
    a = out.alpha[0, :, :, 0]
    assert a[7:9, 7:9].min() > 0.95  # centre rays cross the blob
    assert a[0, 0] < 0.05 and a[0, 0] >= 0  # corner rays miss it
    # Rays missing the bounding sphere entirely see exactly the background.
    cams = orbit_cameras([0.0], [0.0], 3.0, 90.0, 16, 16)
    with torch.no_grad():
        wide = scene.render(cams, torch.tensor([[0.0, 1.0, 0.0]]))
    assert wide.alpha[0, 0, 0, 0] == 0
    torch.testing.assert_close(wide.rgb[0, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    # Depth: camera z of the blob's front surface, between the ball's front and the centre.
    assert 2.3 < out.depth[0, 8, 8, 0] < 3.0
    # density() / albedo() for export: high inside, ~0 outside, 0 beyond the bounding sphere.
    dens = scene.density(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.8, 0.0], [0.0, 0.0, 1.5]]))
    assert dens[0] > 5 and dens[1] < 0.05 and dens[2] == 0
    alb = scene.albedo(torch.rand(10, 3) - 0.5)
    assert alb.shape == (10, 3) and alb.min() >= 0 and alb.max() <= 1


def test_normals_point_outward_and_methods_agree() -> None:
    torch.manual_seed(3)
    x = torch.randn(64, 3)
    x = (0.25 + 0.4 * torch.rand(64, 1)) * x / x.norm(dim=-1, keepdim=True)
    radial = x / x.norm(dim=-1, keepdim=True)
    n_an = _scene(normals="analytic").normals(x)
    n_fd = _scene(normals="finite_difference", normal_eps=1e-3).normals(x)
    torch.testing.assert_close(n_an.norm(dim=-1), torch.ones(64))
    assert (n_an * radial).sum(-1).min() > 0.9
    assert (n_an * n_fd).sum(-1).min() > 0.99


@pytest.mark.parametrize("activation", ["softplus", "exp"])
def test_closed_form_density_gradient_matches_autograd(activation: str) -> None:
    scene = _scene(hidden_layers=2, density_activation=activation)
    with torch.no_grad():
        scene.field.grid.table.uniform_(-1, 1)  # a field with structure beyond the blob
    torch.manual_seed(5)
    x = 0.8 * (torch.rand(200, 3) * 2 - 1)
    sigma, albedo, grad = scene.field.with_gradient(x)
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(scene.field.density(xg).sum(), xg)
    torch.testing.assert_close(sigma, scene.field.density(x))
    torch.testing.assert_close(albedo, scene.field(x)[1])
    torch.testing.assert_close(grad, auto, rtol=1e-4, atol=1e-4 * float(sigma.detach().max()))
    # Differentiable w.r.t. the parameters (the orientation loss trains the field through it).
    grad.pow(2).sum().backward()
    assert scene.field.grid.table.grad.abs().sum() > 0 and scene.field.density_head[0].weight.grad.abs().sum() > 0
    # Works in inference mode too (no autograd involved), same values.
    with torch.inference_mode():
        torch.testing.assert_close(scene.normals(x), -torch.nn.functional.normalize(auto, dim=-1), rtol=1e-4, atol=1e-4)


def test_trunc_exp_clamps_only_the_backward() -> None:
    x = torch.tensor([0.0, 2.0, 20.0], requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y.detach(), torch.exp(x.detach()))  # forward: plain exp
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.exp(torch.tensor([0.0, 2.0, 15.0])))  # backward: exp(min(x, 15))


def test_dense_path_queries_only_samples_on_rays_that_hit() -> None:
    scene = _scene(occupancy=False, num_samples=16)
    scene.set_training(False)
    cams = orbit_cameras([0.0], [0.0], 3.0, 90.0, 12, 12)  # the corners miss the bounding sphere
    origins, dirs = (t.reshape(-1, 3) for t in cams.rays())
    t0, t1 = sphere_bounds(origins, dirs, 1.0)
    hits = int((t1 > t0).sum())
    assert 0 < hits < 144
    with torch.no_grad():
        out = scene.render(cams, torch.zeros(1, 3))
    assert out.info["num_samples"] == hits * 16
    assert (out.alpha.reshape(-1)[t1 <= t0] == 0).all()


def test_exemplar_preset_renders_like_the_default() -> None:
    """The CPU preset (8 levels, 2^16 tables, 32 samples) starts from the same blob."""
    assert EXEMPLAR_NERF.grid.n_levels == 8 and EXEMPLAR_NERF.num_samples == 32
    outs = []
    for cfg in (NerfConfig(), EXEMPLAR_NERF):
        torch.manual_seed(0)
        scene = cfg.setup(torch.device("cpu"))
        scene.set_training(False)
        with torch.no_grad():
            outs.append(scene.render(_cams(2, 16), torch.ones(2, 3)))
    assert outs[1].info["num_samples"] < 0.6 * outs[0].info["num_samples"]
    assert (outs[0].alpha - outs[1].alpha).abs().max() < 0.05  # (the albedo MLPs differ: random init)
    inside = outs[0].alpha[..., 0] > 0.5
    assert (outs[0].depth - outs[1].depth)[inside].abs().max() < 0.05


def test_shading_modes_under_a_point_light() -> None:
    scene = _scene(albedo_prob=0.0, lambertian_prob=0.0, textureless_prob=1.0, ambient_ratio=0.2)
    cams = _cams(1, 16)
    out = scene.render(cams, torch.ones(1, 3))
    assert out.info["shading"] == "textureless"
    rgb, a = out.rgb[0], out.alpha[0, ..., 0]
    grey = (rgb - (1 - a[..., None])) / a[..., None].clamp_min(1e-6)  # un-composite white
    inside = a > 0.95
    assert (grey[inside].max(-1).values - grey[inside].min(-1).values).max() < 1e-4  # white albedo: grey
    assert grey[inside].min() >= 0.2 - 1e-4 and grey[inside].max() > 0.5  # ambient floor, lit side
    scene.set_training(False)
    assert scene.render(cams, torch.ones(1, 3)).info["shading"] == "albedo"
    warm = _scene(albedo_warmup_steps=5, albedo_prob=0.0)
    assert warm.render(cams, torch.ones(1, 3)).info["shading"] == "albedo"


def test_chunked_render_equals_one_chunk() -> None:
    cams = _cams(2, 8)
    outs = []
    for chunk in (10000, 40):
        scene = _scene(ray_chunk=chunk)
        torch.manual_seed(7)
        out = scene.render(cams, torch.ones(2, 3))
        out.rgb.sum().backward()
        outs.append((out.rgb.detach(), scene.field.grid.table.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-7)


def test_learned_background_is_used_and_trained() -> None:
    scene = _scene(background="learned", orientation_weight=(0.0, 0.0))
    cams = orbit_cameras([0.0], [0.0], 3.0, 90.0, 8, 8)
    out = scene.render(cams, torch.zeros(1, 3))
    assert out.rgb[0, 0, 0].min() > 0.05  # corner: sigmoid(MLP(dir)), not the black given
    out.rgb.sum().backward()
    assert scene.field.background[0].weight.grad.abs().sum() > 0


def _fit(scene: NerfScene, steps: int, size: int = 12) -> list[float]:
    cams = _cams(2, size)
    target = torch.ones(2, size, size, 3)
    target[:, size // 4 : -size // 4, size // 4 : -size // 4] = torch.tensor([0.9, 0.1, 0.1])
    losses = []
    for step in range(steps):
        out = scene.render(cams, torch.ones(2, 3))
        loss = ((out.rgb - target) ** 2).mean()
        (loss + scene.regularization(out, step, steps)).backward()
        scene.optimizer_step(step, out)
        losses.append(loss.item())
    return losses


def test_optimizer_steps_fit_a_target_image() -> None:
    scene = _scene(orientation_weight=(0.0, 0.0), albedo_warmup_steps=100, lr_mlp=1e-2, lr_grid=3e-2)
    losses = _fit(scene, 6)
    assert all(b < a for a, b in zip(losses, losses[1:]))  # every step lowers the L2 loss
    assert losses[-1] < 0.93 * losses[0]


@pytest.mark.parametrize("which", ["orientation", "sparsity_mean", "sparsity_entropy"])
def test_regularizers_non_negative_and_descend(which: str) -> None:
    kw: dict = dict(orientation_weight=(0.0, 0.0), blob_density=3.0)
    if which == "orientation":
        kw["orientation_weight"] = (1.0, 3.0)
    else:
        kw["sparsity_weight"] = (1.0, 1.0)
        kw["sparsity"] = which.split("_")[1]
    scene = _scene(**kw)
    scene.set_training(False)  # deterministic samples, so the two evaluations are comparable
    cams = _cams(2, 12)
    out = scene.render(cams, torch.ones(2, 3))
    r0 = scene.regularization(out, 0, 10)
    assert r0.item() > 0
    if which == "orientation":  # sds3d.schedule.lerp: weight 1 at step 0, 2 at step 5 of 0..10, 3 on the last
        torch.testing.assert_close(scene.regularization(out, 5, 11), 2 * r0)
        torch.testing.assert_close(scene.regularization(out, 10, 11), 3 * r0)
    r0.backward()
    with torch.no_grad():
        for p in scene.field.parameters():
            if p.grad is not None:
                p -= 1e-3 / max(p.grad.abs().max().item(), 1e-12) * p.grad  # small step down the gradient
    r1 = scene.regularization(scene.render(cams, torch.ones(2, 3)), 0, 10)
    assert 0 <= r1.item() < r0.item()


def test_state_dict_round_trip_resumes_bit_identically(tmp_path) -> None:
    scene = _scene(seed=0, grid=HashGridConfig(**{**TINY_GRID.__dict__, "progressive_start_levels": 2, "progressive_interval": 2}))
    _fit(scene, 3, size=8)
    path = tmp_path / "scene.pt"
    torch.save(scene.state_dict(), path)
    cams = _cams(2, 8)

    def next_step(s: NerfScene) -> torch.Tensor:
        torch.manual_seed(11)
        out = s.render(cams, torch.ones(2, 3))
        out.rgb.mean().backward()
        s.optimizer_step(s.step, out)
        s.set_training(False)
        with torch.no_grad():
            return s.render(cams, torch.ones(2, 3)).rgb

    other = _scene(seed=5, grid=scene.cfg.grid)
    other.load_state_dict(torch.load(path))
    assert other.step == scene.step == 3 and other.field.grid.level_mask.tolist() == [1, 1, 1, 0]
    a, b = next_step(scene), next_step(other)
    assert torch.equal(a, b)
    assert scene.field.grid.level_mask.tolist() == [1, 1, 1, 1]  # step 4: one more level
    for k, v in scene.field.state_dict().items():
        assert torch.equal(v, other.field.state_dict()[k]), k


def test_occupancy_grid_update_skips_empty_space_on_cpu() -> None:
    """The grid update is plain torch; on the CPU the dense samples in empty cells are skipped."""
    scene = _scene(occ_resolution=16, occ_update_interval=4)
    no_grid = _scene(occupancy=False)
    assert no_grid.estimator is None and no_grid.num_primitives() == sum(p.numel() for p in no_grid.field.parameters())
    est = scene.estimator
    assert est is not None and bool(est.binaries.all())  # everything is sampled before the first update
    scene.set_training(False)
    cams = _cams(2, 12)
    with torch.no_grad():
        full = scene.render(cams, torch.ones(2, 3))
        scene.optimizer_step(0, full)  # no gradients: only the occupancy update (step 0 of every 4)
        skip = scene.render(cams, torch.ones(2, 3))
    occ = est.binaries[0]
    assert occ[7:9, 7:9, 7:9].all()  # the centre of the blob
    assert not occ[0, 0, 0] and not occ[15, 15, 15]  # corners: outside the bounding sphere
    assert scene.num_primitives() == int(occ.sum()) < 16**3 // 4
    assert skip.info["num_samples"] < 0.5 * full.info["num_samples"]
    assert (skip.alpha - full.alpha).abs().max() < 0.01
    assert (skip.rgb - full.rgb).abs().max() < 0.01
    assert torch.equal(scene.state_dict()["estimator"]["binaries"], est.binaries)


def test_dilated_occupancy_follows_updates_and_loads() -> None:
    scene = _scene(occ_resolution=8)
    est = scene.estimator
    assert est is not None and bool(scene._dilated_occupancy().all())
    state = copy.deepcopy(scene.state_dict())
    with torch.no_grad():
        scene.optimizer_step(0, scene.render(_cams(1, 8), torch.ones(1, 3)))  # update: the blob only
    grown = scene._dilated_occupancy()
    assert not bool(grown.all()) and bool(grown[3:5, 3:5, 3:5].all())
    torch.testing.assert_close(grown, torch.nn.functional.max_pool3d(est.binaries.float(), 3, 1, 1)[0] > 0)
    scene.load_state_dict(state)  # in-place copy of the all-occupied grid
    assert bool(scene._dilated_occupancy().all())


# ----------------------------------------------------------------------------- end to end

NERF_CLI_FAST = [
    "--scene", "nerf", "--device", "cpu", "--steps", "2", "--resolution", "16", "--batch-size", "4",
    "--nerf.grid.n-levels", "4", "--nerf.num-samples", "16", "--turntable-frames", "2",
    "--turntable-resolution", "16", "--preview-every", "0", "--export.resolution", "16",
    "--export.turntable-frames", "2", "--export.turntable-resolution", "16",
    "--export.eval-views", "2", "--export.eval-resolution", "16", "--log-every", "1",
]  # fmt: skip


@pytest.mark.parametrize(
    "guidance, extra",
    [("sds", []), ("nfsd", []), ("csd", []), ("vsd", []), ("coupled", ["--mv-prior", "exemplar"]),
     ("mvsds", ["--mv-prior", "exemplar"])],
)  # fmt: skip
def test_generate_nerf_runs_every_method_with_tiny_sd(tiny_sd_dir, tmp_path, guidance: str, extra: list[str]) -> None:
    import json

    from sds3d.cli import main

    out = tmp_path / "out"
    args = ["generate", "a snowman", "--prior", str(tiny_sd_dir), "--guidance", guidance, "--output-dir", str(out)]
    assert main([*args, *NERF_CLI_FAST, *extra]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["scene"] == "nerf" and summary["guidance"] == guidance
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:  # coupled logs its two terms' norms as 2d/grad_norm and mv/grad_norm
        norms = [v for k, v in m.items() if k.endswith("grad_norm")]
        assert math.isfinite(m["loss"]) and norms and all(v > 0 for v in norms), m
    assert (run / "mesh.glb").exists() and (run / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nerfacc's occupancy-grid sampling needs CUDA")
def test_occgrid_path_matches_dense_path_on_cuda(exact_float32: None) -> None:
    scene = _scene(device="cuda", num_samples=256, occ_resolution=32, occ_alpha_threshold=0.0)
    assert scene.estimator is not None
    scene.set_training(False)
    cams = _cams(2, 16).to("cuda")
    with torch.no_grad():
        occ = scene.render(cams, torch.ones(2, 3, device="cuda"))
        est, scene.estimator = scene.estimator, None  # same field through the dense path
        dense = scene.render(cams, torch.ones(2, 3, device="cuda"))
        scene.estimator = est
    assert (occ.alpha - dense.alpha).abs().max() < 2e-2
    assert (occ.rgb - dense.rgb).abs().max() < 2e-2
    inside = dense.alpha[..., 0] > 0.5
    assert (occ.depth - dense.depth)[inside].abs().max() < 2e-2
    # Training steps update the occupancy grid: the empty corners are dropped, gradients flow.
    scene.set_training(True)
    for step in range(2):
        out = scene.render(cams, torch.ones(2, 3, device="cuda"))
        out.rgb.mean().backward()
        assert scene.field.grid.table.grad.abs().sum() > 0
        scene.optimizer_step(step, out)
    cells = scene.num_primitives()
    assert 0 < cells < 32**3
    assert math.isfinite(out.rgb.sum().item())
