"""The exemplar prior: closed-form denoiser, conditionings, multi-view weighting, libraries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh

from sds3d.cameras import orbit_cameras, view_buckets
from sds3d.priors.exemplar import ExemplarConfig, ExemplarPrior, load_exemplar
from sds3d.priors.exemplar_library import (
    LibraryObject,
    builtin_library,
    library_cameras,
    load_library_dir,
    normalize_mesh,
    render_library,
)
from sds3d.types import Prior, SDS3DError

RES = 16


def _coloured(mesh: trimesh.Trimesh, rgb: tuple[int, int, int]) -> trimesh.Trimesh:
    mesh.visual.vertex_colors = np.tile([*rgb, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    return mesh


def _marked(body: trimesh.Trimesh, rgb: tuple[int, int, int]) -> trimesh.Trimesh:
    """A body with a black marker on its front (+x) so views differ."""
    marker = _coloured(trimesh.creation.icosphere(2, radius=0.35), (0, 0, 0))
    marker.apply_translation([0.9, 0, 0])
    return normalize_mesh(trimesh.util.concatenate([_coloured(body, rgb), marker]))


@pytest.fixture(scope="module")
def objects() -> list[LibraryObject]:
    return [
        LibraryObject("a red ball", _marked(trimesh.creation.icosphere(2), (220, 30, 30))),
        LibraryObject("a green box", _marked(trimesh.creation.box(extents=(1.4, 1.4, 1.4)), (30, 200, 30))),
        LibraryObject("a blue cylinder", _marked(trimesh.creation.cylinder(0.8, 1.6), (30, 30, 220))),
    ]


@pytest.fixture(scope="module")
def prior(objects, tmp_path_factory) -> ExemplarPrior:
    cfg = ExemplarConfig(resolution=RES, num_groups=8, chunk=20, cache_dir=tmp_path_factory.mktemp("cache"))
    return ExemplarPrior(objects, torch.device("cpu"), cfg)


def _brute_eps(prior: ExemplarPrior, x_t: torch.Tensor, t: torch.Tensor, allowed: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample python loop over the allowed images, float64."""
    out = []
    for b in range(x_t.shape[0]):
        ab = float(prior.alphas_cumprod[t[b]])
        x = x_t[b].reshape(-1).double()
        ys = prior.images[allowed[b]].double()
        logw = torch.stack([-((x - math.sqrt(ab) * y) ** 2).sum() / (2 * (1 - ab)) for y in ys])
        w = torch.softmax(logw, 0)
        x0 = (w[:, None] * ys).sum(0)
        out.append(((x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)).reshape(x_t.shape[1:]))
    return torch.stack(out).float()


def test_protocol_schedule_and_pixel_space(prior: ExemplarPrior) -> None:
    assert isinstance(prior, Prior) and prior.num_views == 1 and prior.prediction_type == "epsilon"
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(prior.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), atol=1e-6)
    rgb = torch.rand(2, 32, 32, 3, requires_grad=True)
    x = prior.encode_images(rgb)
    assert x.shape == (2, 3, RES, RES) and -1 <= float(x.detach().min()) and float(x.detach().max()) <= 1
    x.sum().backward()
    assert rgb.grad is not None and float(rgb.grad.abs().sum()) > 0
    same = torch.rand(1, RES, RES, 3)
    assert torch.allclose(prior.decode(prior.encode_images(same)), same, atol=1e-6)


def test_closed_form_matches_brute_force(prior: ExemplarPrior) -> None:
    torch.manual_seed(0)
    B = 4
    t = torch.tensor([60, 300, 700, 990])
    y = prior.images[torch.tensor([3, 40, 70, 10])].reshape(B, 3, RES, RES)
    ab = prior.alphas_cumprod[t].view(B, 1, 1, 1)
    x_t = ab.sqrt() * y + (1 - ab).sqrt() * torch.randn_like(y)
    prompts = [
        ["a red ball, front view", "a red ball, back view", "a DSLR photo of a green box", "a blue cylinder, side view"],
        [""] * B,
        ["a green box, a blue cylinder, ugly"] * B,
    ]
    conds = [prior.condition(p) for p in prompts]
    eps = prior.predict_noise(x_t, t, conds)
    assert eps.shape == (3, B, 3, RES, RES)
    for k, cs in enumerate(conds):
        brute = _brute_eps(prior, x_t, t, [prior._allowed(c) for c in cs])
        assert torch.allclose(eps[k], brute, atol=2e-3, rtol=1e-3), (k, float((eps[k] - brute).abs().max()))


def test_single_image_returns_it_and_nearest_image_dominates(prior: ExemplarPrior) -> None:
    # A conditioning with one allowed image: x0_hat is that image at every t, so eps is exact.
    cond = prior.condition(["a red ball, front view"])[0]
    allowed = prior._allowed(cond)
    torch.manual_seed(1)
    cams = library_cameras(8, RES)
    fronts = [i for i, b in enumerate(view_buckets(cams.elevation, cams.azimuth)) if b == "front"]
    assert int(allowed.sum()) == len(fronts) >= 1
    one = ExemplarPrior.__new__(ExemplarPrior)
    one.__dict__.update(prior.__dict__)
    keep = torch.nonzero(allowed)[:1, 0]
    one.images, one.sq_norms = prior.images[keep], prior.sq_norms[keep]
    one.object_id, one.bucket_id, one._cache, one._masks = prior.object_id[keep], prior.bucket_id[keep], {}, {}
    one.n_objects, one.images_per_object = 1, 1
    y = one.images.reshape(1, 3, RES, RES)
    for step in (5, 500, 990):
        t = torch.tensor([step])
        ab = one.alphas_cumprod[t].view(1, 1, 1, 1)
        noise = torch.randn_like(y)
        eps = one.predict_noise(ab.sqrt() * y + (1 - ab).sqrt() * noise, t, [one.condition(["a red ball"])])
        assert torch.allclose(eps[0], noise, atol=5e-3)
    # Full library, small t: the denoiser returns the image the sample came from.
    t = torch.tensor([10, 10])
    ab = prior.alphas_cumprod[t].view(2, 1, 1, 1)
    ys = prior.images[torch.tensor([5, 50])].reshape(2, 3, RES, RES)
    x_t = ab.sqrt() * ys + (1 - ab).sqrt() * torch.randn_like(ys)
    eps = prior.predict_noise(x_t, t, [prior.condition(["", ""])])[0]
    x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
    assert torch.allclose(x0, ys, atol=1e-3)


def test_cond_uncond_split_and_negative(prior: ExemplarPrior) -> None:
    red, green, cyl = (prior.condition([p])[0] for p in ("a red ball", "a green box", "blue cylinder"))
    assert (red.objects, green.objects, cyl.objects) == ((0,), (1,), (2,))
    assert prior.condition([""])[0].objects == (0, 1, 2)
    assert prior.condition(["unrealistic, blurry, low quality"])[0].objects == (0, 1, 2)  # falls back to all
    assert prior.condition(["a green box, blurry"])[0].objects == (1,)
    # A sample made from a green-box image: the red-ball conditioning can only answer with
    # red-ball images, the unconditional one returns the green box.
    t = torch.tensor([100])
    ab = prior.alphas_cumprod[t].view(1, 1, 1, 1)
    idx = int(torch.nonzero(prior.object_id == 1)[3, 0])
    y = prior.images[idx].reshape(1, 3, RES, RES)
    x_t = ab.sqrt() * y + (1 - ab).sqrt() * torch.randn_like(y)
    eps = prior.predict_noise(x_t, t, [prior.condition(["a red ball"]), prior.condition([""])])
    x0 = (x_t[None] - (1 - ab).sqrt() * eps) / ab.sqrt()
    d = torch.cdist(x0.reshape(2, -1), prior.images)  # [2, M]
    assert int(prior.object_id[d[0].argmin()]) == 0 and float(d[0].min()) < 1e-2
    assert int(d[1].argmin()) == idx


def test_view_bucket_restriction(prior: ExemplarPrior) -> None:
    back = prior.condition(["a blue cylinder, back view"])[0]
    assert back.bucket == "back"
    allowed = prior._allowed(back)
    assert bool((prior.object_id[allowed] == 2).all())
    assert bool((prior.bucket_id[allowed] == 2).all()) and int(allowed.sum()) >= 1  # VIEW_NAMES[2] = back
    assert prior.condition(["a blue cylinder, overhead view"])[0].bucket is None  # no overhead images: dropped
    flat = ExemplarPrior.__new__(ExemplarPrior)
    flat.__dict__.update(prior.__dict__)
    flat.cfg, flat._cache, flat._masks = ExemplarConfig(resolution=RES, num_groups=8, view_dependent=False), {}, {}
    assert flat.condition(["a blue cylinder, back view"])[0].bucket is None


def test_unknown_prompt_lists_library(prior: ExemplarPrior) -> None:
    with pytest.raises(SDS3DError, match="a red ball.*a green box.*a blue cylinder"):
        prior.condition(["a corgi"])
    with pytest.raises(SDS3DError, match="exemplar:DIR"):
        load_exemplar("exemplr", torch.device("cpu"))


def test_multi_view_prefers_groups_with_matching_cameras(objects, tmp_path_factory) -> None:
    cfg = ExemplarConfig(resolution=RES, num_groups=8, multi_view=True, camera_sigma=5.0, cache_dir=tmp_path_factory.mktemp("mv"))
    mv = ExemplarPrior(objects, torch.device("cpu"), cfg)
    assert mv.num_views == 4
    cams = library_cameras(8, RES)
    g = 5
    imgs = mv.images.reshape(3, 8, 4, -1)[1]  # the green box's groups [G, 4, D]
    for shift in (0, 1):
        order = [(k + shift) % 4 for k in range(4)]
        req = cams[[4 * g + j for j in order]]
        x_t = torch.zeros(4, 3, RES, RES)  # at t = 999 the data term barely matters
        eps = mv.predict_noise(x_t, torch.full((4,), 999), [mv.condition(["a green box"] * 4)], req)
        ab = mv.alphas_cumprod[999]
        x0 = (x_t - (1 - ab).sqrt() * eps[0]) / ab.sqrt()
        for k in range(4):
            d = ((imgs[:, order[k]] - x0[k].reshape(1, -1)) ** 2).sum(-1)  # vs each group's view
            assert int(d.argmin()) == g and float(d[g]) < 0.2 * float(d.median())


def test_user_folder_with_prompts_json_and_gltf_axes(tmp_path) -> None:
    def glb(name: str, marker_at: list[float]) -> None:
        body = _coloured(trimesh.creation.box(extents=(1, 1, 1)), (200, 200, 200))
        marker = _coloured(trimesh.creation.icosphere(2, radius=0.2), (255, 0, 0))
        marker.apply_translation(marker_at)
        data = trimesh.util.concatenate([body, marker]).export(file_type="glb")
        (tmp_path / name).write_bytes(data)

    glb("front_marker.glb", [0, 0, 0.8])  # glTF front (+z)
    glb("top_marker.glb", [0, 0.8, 0])  # glTF up (+y)
    (tmp_path / "prompts.json").write_text(json.dumps({"front_marker.glb": "a box with a red nose"}))
    (tmp_path / "notes.txt").write_text("ignored")
    lib = load_library_dir(tmp_path)
    assert [o.prompt for o in lib] == ["a box with a red nose", "top marker"]
    for obj, axis in zip(lib, (0, 2)):  # our +x (front) and +z (up)
        v = obj.mesh.vertices
        assert abs(float(np.linalg.norm(v, axis=1).max()) - 1.0) < 1e-9
        red = np.asarray(obj.mesh.visual.vertex_colors)[:, :3].astype(int)
        is_red = (red[:, 0] > 200) & (red[:, 1] < 50)
        centre = v[is_red].mean(0)
        assert centre[axis] > 0.4 and np.abs(np.delete(centre, axis)).max() < 0.2
    renders = render_library(lib, resolution=8, num_groups=2, cache_dir=tmp_path / "cache")
    assert renders.images.shape == (2, 2, 4, 3, 8, 8) and renders.prompts[1] == "top marker"
    cached = render_library(lib, resolution=8, num_groups=2, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2 and torch.equal(cached.images, renders.images)


def test_bad_library_folders(tmp_path) -> None:
    with pytest.raises(SDS3DError, match="no .glb"):
        load_library_dir(tmp_path)
    with pytest.raises(SDS3DError, match="does not exist"):
        load_library_dir(tmp_path / "missing")
    (tmp_path / "broken.glb").write_bytes(b"not a mesh")
    with pytest.raises(SDS3DError, match="broken.glb"):
        load_library_dir(tmp_path)


def test_builtin_library_fronts_face_plus_x() -> None:
    lib = builtin_library()
    assert len(lib) >= 6 and len({o.prompt for o in lib}) == len(lib)
    for obj in lib:
        assert abs(float(np.linalg.norm(obj.mesh.vertices, axis=1).max()) - 1.0) < 1e-9
    snowman = next(o for o in lib if o.prompt == "a snowman").mesh
    c = np.asarray(snowman.visual.vertex_colors)[:, :3].astype(int)
    orange = (c[:, 0] > 200) & (c[:, 1] > 90) & (c[:, 1] < 150) & (c[:, 2] < 60)
    assert snowman.vertices[orange, 0].max() == snowman.vertices[:, 0].max()  # the carrot nose points to +x
    # The true renders differ between front and back (the Janus test needs that).
    cams = orbit_cameras([10.0, 10.0], [0.0, 180.0], 3.2, 42.0, 24, 24)
    prior_free = [o for o in lib if o.prompt in ("a penguin", "a small house")]
    from sds3d.render.raycast import raycast_mesh

    for obj in prior_free:
        rgb, _, _ = raycast_mesh(obj.mesh, cams)
        assert float((rgb[0] - rgb[1].flip(1)).abs().mean()) > 0.01


def _on(prior: ExemplarPrior, background: torch.Tensor) -> torch.Tensor:
    """Every library image composited on ``background`` [3] by hand: [M, D] in [-1, 1]."""
    M = len(prior.images)
    rgb = (prior.images.reshape(M, 3, -1) + 1.0) / 2.0
    alpha = 1.0 - prior.cover[:, None] / 2.0
    # the library renders are on white: rgb = alpha c + (1 - alpha); on b: alpha c + (1 - alpha) b
    return (2.0 * (rgb - (1.0 - alpha) + (1.0 - alpha) * background[None, :, None]) - 1.0).reshape(M, -1)


def test_background_composites_the_library_on_it(prior: ExemplarPrior) -> None:
    """predict_noise on a background equals the brute-force score over the library composited on
    it by hand; all-white backgrounds give exactly the white library's score."""
    torch.manual_seed(0)
    B = 3
    bg = torch.tensor([[0.1, 0.6, 0.9], [0.0, 0.0, 0.0], [1.0, 0.2, 0.5]])
    t = torch.tensor([100, 500, 900])
    x_t = torch.randn(B, 3, RES, RES)
    cond = [prior.condition(["a red ball", "", "a blue cylinder"])]
    allowed = [prior._allowed(c) for c in cond[0]]
    eps = prior.predict_noise(x_t, t, cond, background=bg)[0]
    white_images = prior.images
    for b in range(B):
        prior.images = _on(prior, bg[b])
        try:
            ref = _brute_eps(prior, x_t[b : b + 1], t[b : b + 1], [allowed[b]])
        finally:
            prior.images = white_images
        assert torch.allclose(eps[b : b + 1], ref, atol=2e-3), b
    plain = prior.predict_noise(x_t, t, cond)
    assert torch.equal(prior.predict_noise(x_t, t, cond, background=torch.ones(B, 3)), plain)
    assert float((eps - plain[0]).abs().max()) > 0.1  # the background does change the score
    # a render of a library image on a dark background is recognised on that background
    y = _on(prior, bg[1])[allowed[0].nonzero()[5, 0]].reshape(1, 3, RES, RES)
    ab = prior.alphas_cumprod[20]
    x_t = ab.sqrt() * y + (1 - ab).sqrt() * 0.01 * torch.randn_like(y)
    eps = prior.predict_noise(x_t, torch.tensor([20]), [prior.condition(["a red ball"])], background=bg[1:2])
    x0 = (x_t - (1 - ab).sqrt() * eps[0]) / ab.sqrt()
    assert torch.allclose(x0, y, atol=1e-3)


def test_multi_view_background_recognises_a_group_on_it(objects, tmp_path_factory) -> None:
    cfg = ExemplarConfig(resolution=RES, num_groups=8, multi_view=True, camera_sigma=5.0, cache_dir=tmp_path_factory.mktemp("mvbg"))
    mv = ExemplarPrior(objects, torch.device("cpu"), cfg)
    cams = library_cameras(8, RES)
    g, bg = 3, torch.tensor([[0.2, 0.1, 0.0]] * 4)
    y = _on(mv, bg[0]).reshape(3, 8, 4, 3, RES, RES)[2, g]  # the blue cylinder's group g on bg
    ab = mv.alphas_cumprod[20]
    x_t = ab.sqrt() * y
    eps = mv.predict_noise(x_t, torch.full((4,), 20), [mv.condition(["a blue cylinder"] * 4)], cams[4 * g : 4 * g + 4], bg)
    x0 = (x_t - (1 - ab).sqrt() * eps[0]) / ab.sqrt()
    assert torch.allclose(x0, y, atol=1e-3)
    white = mv.predict_noise(x_t, torch.full((4,), 20), [mv.condition(["a blue cylinder"] * 4)], cams[4 * g : 4 * g + 4])
    assert float(((x_t - (1 - ab).sqrt() * white[0]) / ab.sqrt() - y).abs().max()) > 0.1


@pytest.mark.parametrize("multi_view", [False, True])
def test_one_object_prompt_reads_only_its_images(objects, tmp_path_factory, monkeypatch, multi_view: bool) -> None:
    """A prompt that names one object gives the same score from that object's images alone as
    from the whole library (the others get weight 0), on white and on another background."""
    cfg = ExemplarConfig(resolution=RES, num_groups=8, multi_view=multi_view, chunk=20, cache_dir=tmp_path_factory.mktemp("span"))
    p = ExemplarPrior(objects, torch.device("cpu"), cfg)
    per = 8 * 4
    cond = [p.condition(["a green box"] * 4), p.condition(["a green box, side view"] * 4)]
    assert p._span(torch.stack([torch.stack([p._allowed(c) for c in cs]) for cs in cond])) == slice(per, 2 * per)
    torch.manual_seed(3)
    x_t, t = torch.randn(4, 3, RES, RES), torch.tensor([50, 300, 600, 950])
    cams = library_cameras(8, RES)[8:12]
    for bg in (None, torch.tensor([[0.2, 0.5, 0.9]] * 4)):
        fast = p.predict_noise(x_t, t, cond, cams, bg)
        monkeypatch.setattr(p, "_span", lambda allowed: slice(None))
        full = p.predict_noise(x_t, t, cond, cams, bg)
        monkeypatch.undo()
        assert torch.allclose(fast, full, atol=1e-5), float((fast - full).abs().max())
        assert float(full.abs().max()) > 0.5


def test_library_sums_match_the_whole_library_formulas(objects, tmp_path_factory) -> None:
    """The per-image sums are taken a chunk at a time and the coverage is made in place from the
    alpha renders; the values equal the float64 formulas over the whole library."""
    from sds3d.priors.exemplar_library import render_library

    cfg = ExemplarConfig(resolution=16, num_groups=6, chunk=7, cache_dir=tmp_path_factory.mktemp("sums"))
    p = ExemplarPrior(objects, torch.device("cpu"), cfg)
    lib = render_library(objects, 16, 6, cache_dir=cfg.cache_dir)
    M, P = p.cover.shape
    assert M == len(objects) * 24 and torch.equal(p.cover, (2.0 * (1.0 - lib.alpha)).reshape(M, -1))
    assert torch.equal(p.images, lib.images.reshape(M, -1))
    y, c = p.images.double(), p.cover.double()
    assert torch.equal(p.sq_norms, (y**2).sum(-1).float())
    assert torch.equal(p.image_cover, (y.reshape(M, 3, P) * c[:, None]).sum(-1).float())
    assert torch.equal(p.cover_sq, (c**2).sum(-1).float())
    assert p.cover.min() >= 0 and p.cover.max() <= 2 and (p.cover > 0).any() and (p.cover < 2).any()
