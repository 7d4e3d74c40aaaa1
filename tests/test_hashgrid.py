"""Hash-grid encoding: interpolation, dense/hashed levels, gradients, coarse-to-fine mask."""

from __future__ import annotations

import pytest
import torch

from sds3d.scenes.hashgrid import HashGrid, HashGridConfig

# Levels of 4, 8, 16, 32 cells per axis; 2^8 = 256 entries: level 0 (125 vertices) is dense,
# levels 1-3 are hashed.
SMALL = HashGridConfig(n_levels=4, features_per_level=2, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0)


def _grid(cfg: HashGridConfig = SMALL, seed: int = 0) -> HashGrid:
    torch.manual_seed(seed)
    g = cfg.setup()
    with torch.no_grad():
        g.table.uniform_(-1.0, 1.0)  # large entries so differences are visible
    return g


def test_levels_dense_then_hashed() -> None:
    g = _grid()
    assert g.resolutions.tolist() == [4, 8, 16, 32]
    assert g.dense.tolist() == [True, False, False, False]
    assert g.sizes.tolist() == [125, 256, 256, 256]
    assert g.table.shape == (125 + 3 * 256, 2)
    assert g.output_dim == 8


@pytest.mark.parametrize("level", [0, 1, 3])
def test_values_at_vertices_are_table_entries(level: int) -> None:
    g = _grid()
    res = int(g.resolutions[level])
    torch.manual_seed(1)
    v = torch.randint(0, res + 1, (50, 3))
    out = g(v.float() / res)
    F = SMALL.features_per_level
    expected = g.table[g.vertex_index(level, v)]
    torch.testing.assert_close(out[:, level * F : (level + 1) * F], expected, rtol=0, atol=1e-6)


def test_linear_along_an_edge_and_continuous_across_cells() -> None:
    g = _grid()
    res, F = 8, SMALL.features_per_level  # level 1
    a, b = torch.tensor([[2, 3, 5]]), torch.tensor([[3, 3, 5]])
    ta, tb = g.table[g.vertex_index(1, a)], g.table[g.vertex_index(1, b)]
    for s in (0.25, 0.5, 0.9):
        x = (a.float() + s * (b - a).float()) / res
        torch.testing.assert_close(g(x)[:, F : 2 * F], (1 - s) * ta + s * tb, rtol=0, atol=1e-6)
    # Across cell faces of every level: both sides agree (continuity), on random face points.
    torch.manual_seed(2)
    x = torch.rand(200, 3)
    x[:, 0] = torch.randint(1, 4, (200,)).float() / 4  # faces of level 0 (and all finer levels)
    d = torch.tensor([1e-5, 0.0, 0.0])
    assert (g(x + d) - g(x - d)).abs().max() < 1e-3
    # Far apart points differ (the encoding is not trivially constant).
    assert (g(x) - g(x.flip(0))).abs().max() > 0.1


def test_gradient_reaches_the_corner_entries_with_trilinear_weights() -> None:
    g = _grid()
    x = torch.tensor([[0.3, 0.55, 0.71]])
    g(x)[:, 0].sum().backward()  # level 0, feature 0
    grad = g.table.grad[:, 0]
    assert (grad != 0).sum() == 8  # the cell's 8 vertices
    assert torch.isclose(grad.sum(), torch.tensor(1.0))  # trilinear weights sum to 1
    pos = x[0] * 4
    lo = pos.floor().long()
    w = torch.ones(())
    for k in range(3):
        w = w * (1 - (pos[k] - lo[k]))
    assert torch.isclose(grad[g.vertex_index(0, lo[None])[0]], w)  # weight of the low corner
    assert g.table.grad[:, 1].abs().sum() == 0  # feature 1 untouched


def test_position_gradient_and_double_backward() -> None:
    g = _grid()
    x = torch.rand(64, 3, requires_grad=True)
    y = g(x).pow(2).sum()
    (gx,) = torch.autograd.grad(y, x, create_graph=True)
    # Finite differences agree with autograd (inside cells the encoding is smooth).
    eps = 1e-4
    x0 = x.detach()[:1]
    fd = torch.stack([(g(x0 + eps * e).pow(2).sum() - g(x0 - eps * e).pow(2).sum()) / (2 * eps) for e in torch.eye(3)])
    torch.testing.assert_close(gx[0].detach(), fd, rtol=2e-2, atol=2e-3)
    gx.pow(2).sum().backward()  # second order reaches the table (analytic normals need it)
    assert g.table.grad.abs().sum() > 0


def test_progressive_levels_mask() -> None:
    cfg = HashGridConfig(
        n_levels=4, features_per_level=2, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0,
        progressive_start_levels=2, progressive_interval=10,
    )  # fmt: skip
    g = _grid(cfg)
    x = torch.rand(32, 3)
    assert g.level_mask.tolist() == [1, 1, 0, 0]
    out = g(x)
    assert out[:, 4:].abs().max() == 0 and out[:, :4].abs().max() > 0
    g.set_step(10)
    assert g.level_mask.tolist() == [1, 1, 1, 0]
    g.set_step(1000)
    assert g.level_mask.tolist() == [1, 1, 1, 1]
    assert g(x)[:, 6:].abs().max() > 0
    assert g.enabled_levels(0) == 2 and g.enabled_levels(25) == 4


def test_default_config_is_instant_ngp() -> None:
    cfg = HashGridConfig()
    g = HashGrid(cfg)
    assert g.resolutions[0] == 16 and g.resolutions[-1] == 4095
    assert g.output_dim == 32
    assert int(g.sizes.max()) == 2**19
    assert g.table.abs().max() <= cfg.init_scale


def test_closed_form_jacobian_matches_autograd() -> None:
    cfg = HashGridConfig(
        n_levels=4, features_per_level=2, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0,
        progressive_start_levels=3, progressive_interval=10,
    )  # fmt: skip
    g = _grid(cfg)
    torch.manual_seed(4)
    x = torch.rand(16, 3)
    feats, jac = g.encode(x, jacobian=True)
    assert jac is not None and jac.shape == (16, 3, 8)
    torch.testing.assert_close(feats, g(x))
    auto = torch.autograd.functional.jacobian(lambda p: g(p[None])[0], x[0])  # [8, 3]
    torch.testing.assert_close(jac[0].T, auto, rtol=1e-5, atol=1e-5)
    full = torch.stack([torch.autograd.functional.jacobian(lambda p: g(p[None])[0], xi).T for xi in x])
    torch.testing.assert_close(jac, full, rtol=1e-5, atol=1e-5)
    assert jac[:, :, 6:].abs().max() == 0 and jac[:, :, :6].abs().max() > 1  # masked level; res-scaled
    # First-order differentiable w.r.t. the table: the Jacobian's gradient reaches it.
    jac.pow(2).sum().backward()
    assert g.table.grad.abs().sum() > 0


def test_table_gradient_is_deterministic() -> None:
    g = _grid(HashGridConfig(n_levels=6, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0))
    x = torch.rand(4000, 3)
    w = torch.randn(4000, g.output_dim)
    grads = []
    for _ in range(2):
        g.table.grad = None
        (g(x) * w).sum().backward()
        grads.append(g.table.grad.clone())
    assert torch.equal(grads[0], grads[1])
    # Scatter check against a dense one-hot reference for level 0 (dense level).
    g.table.grad = None
    g(x[:5])[:, 0].sum().backward()
    assert torch.isclose(g.table.grad[:, 0].sum(), torch.tensor(5.0))
