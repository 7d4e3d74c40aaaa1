"""The metrics (sds3d.metrics) and the benchmark's conventions on them (sds3d.bench.metrics), on
inputs with known answers."""

from __future__ import annotations

import math

import pytest
import torch
import trimesh

from sds3d import metrics
from sds3d.bench.metrics import chamfer, janus_score, mask_iou, psnr


def test_psnr_known_values_and_mask() -> None:
    a = torch.zeros(2, 4, 4, 3)
    b = torch.full((2, 4, 4, 3), 0.1)  # MSE 0.01 -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == pytest.approx(100.0)
    c = b.clone()
    c[:, :2] = 0.0  # half the rows exact
    mask = torch.zeros(2, 4, 4, 1)
    mask[:, 2:] = 1
    assert psnr(a, c, mask) == pytest.approx(20.0)  # only the wrong half
    assert psnr(a, c) == pytest.approx(-10 * math.log10(0.005))
    with pytest.raises(ValueError):
        psnr(a, c, torch.zeros(2, 4, 4, 1))


def test_mask_iou() -> None:
    a = torch.zeros(1, 4, 4, 1)
    b = torch.zeros(1, 4, 4, 1)
    a[:, :2] = 1.0  # 8 pixels
    b[:, 1:3] = 0.8  # 8 pixels, 4 shared
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(a, a) == 1.0 and mask_iou(torch.zeros(1, 2, 2, 1), torch.zeros(1, 2, 2, 1)) == 1.0
    assert mask_iou(a, b, threshold=0.9) == 0.0


def test_chamfer_fraction_of_diagonal() -> None:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    assert chamfer(box, box, n=5000) < 0.01
    shifted = box.copy()
    shifted.apply_translation([0.1, 0, 0])
    # Shifting a unit cube by 0.1 along x: mean surface distance a bit below 0.1 of the
    # 1.732 diagonal; much larger than the noise floor above.
    cd = chamfer(shifted, box, n=5000)
    assert 0.02 < cd < 0.1 / math.sqrt(3) + 0.005
    big = box.copy()
    big.apply_scale(2.0)
    # Same relative error for a scaled pair: the distance is normalised by the true diagonal.
    shifted_big = shifted.copy()
    shifted_big.apply_scale(2.0)
    assert chamfer(shifted_big, big, n=5000) == pytest.approx(cd, rel=0.1)
    assert math.isnan(chamfer(trimesh.Trimesh(), box))


def test_janus_score_sign() -> None:
    torch.manual_seed(0)
    front = torch.rand(3, 8, 8, 3)
    back = torch.rand(3, 8, 8, 3)
    assert janus_score(back, front, back) < -20  # a faithful back
    assert janus_score(front, front, back) > 20  # the back shows the front: Janus
    sym = torch.rand(3, 8, 8, 3)
    assert janus_score(torch.rand(3, 8, 8, 3), sym, sym) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        janus_score(front[:2], front, back)


def test_core_metrics_known_values() -> None:
    a = torch.zeros(1, 4, 4, 3)
    assert metrics.psnr(a, a + 0.1) == pytest.approx(20.0)
    m1 = torch.zeros(1, 4, 4, 1)
    m1[:, :2] = 1
    m2 = torch.zeros(1, 4, 4, 1)
    m2[:, 1:3] = 1
    assert metrics.mask_iou(m1, m2) == pytest.approx(4 / 12)
    s1 = trimesh.creation.icosphere(4, radius=0.5)
    s2 = trimesh.creation.icosphere(4, radius=0.55)
    assert metrics.chamfer_distance(s1, s2) == pytest.approx(0.05, abs=0.003)
    assert metrics.psnr(a, a) == math.inf  # no floor: identical images (the export's convention)
