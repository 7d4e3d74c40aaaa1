"""The Scene contract (sds3d.types.Scene): a third scene type, written only against the protocol,
trains through the protocol's training methods and exports through the same path as Gaussians
and NeRF, while the export touches no attribute outside the protocol."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

from sds3d.cameras import CameraConfig, eval_cameras, sample_cameras
from sds3d.export import ExportConfig, export_scene
from sds3d.export.writers import read_mesh
from sds3d.types import GridDensity, RenderOutput, Scene, SplatScene

CAMS = CameraConfig()
EDGE = 0.01  # width of the sphere's soft edge (world units)
SCENE_MEMBERS = {n for n in vars(Scene) if not n.startswith("_")} | set(Scene.__annotations__)


class SoftSphere:
    """A sphere of learnable radius and colour, centred at the origin, rendered analytically:
    a ray whose closest approach to the origin is ``b`` has ``alpha = sigmoid((r - b) / EDGE)``;
    its density is ``10 sigmoid((r - |p|) / EDGE)``, whose level 5 is the sphere ``|p| = r``."""

    volume_density = False  # its renders are not the volume rendering of its density

    def __init__(self, radius: float, colour: tuple[float, float, float]):
        self.log_radius = torch.nn.Parameter(torch.tensor(float(np.log(radius))))
        self.colour_logit = torch.nn.Parameter(torch.logit(torch.tensor(colour)))
        self.optimizer = torch.optim.Adam([self.log_radius, self.colour_logit], lr=0.03)

    def radius(self) -> torch.Tensor:
        return self.log_radius.exp()

    def radius_value(self) -> float:
        return float(self.log_radius.detach().exp())

    def render(self, cameras, background) -> RenderOutput:
        o, d = cameras.rays()
        t = -(o * d).sum(-1, keepdim=True)  # closest approach along the ray
        b = (o + t * d).norm(dim=-1, keepdim=True)
        alpha = torch.sigmoid((self.radius() - b) / EDGE)
        colour = torch.sigmoid(self.colour_logit)
        rgb = alpha * colour + (1.0 - alpha) * background[:, None, None, :]
        return RenderOutput(rgb=rgb, alpha=alpha, depth=alpha * t)

    def regularization(self, out, step, max_steps):
        return torch.zeros(())

    def pre_backward(self, step, out):
        pass

    def optimizer_step(self, step, out):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def num_primitives(self) -> int:
        return 1

    def eval_mode(self):
        return contextlib.nullcontext()

    def bounds(self):
        r = self.radius_value() + 0.1
        return np.full(3, -r), np.full(3, r)

    def density(self, points):
        return 10.0 * torch.sigmoid((self.radius() - points.norm(dim=-1)) / EDGE)

    def albedo(self, points):
        return torch.sigmoid(self.colour_logit).expand(len(points), 3)

    def state_dict(self):
        return {"log_radius": self.log_radius.detach().clone(), "colour_logit": self.colour_logit.detach().clone()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.log_radius.copy_(state["log_radius"])
            self.colour_logit.copy_(state["colour_logit"])


class ProtocolOnly:
    """Exposes only the Scene protocol's members of the wrapped scene: any other attribute is an
    AttributeError, so an export that probes a scene's internals fails here."""

    def __init__(self, scene: SoftSphere):
        object.__setattr__(self, "_scene", scene)

    def __getattr__(self, name: str):
        if name not in SCENE_MEMBERS:
            raise AttributeError(f"export used {name!r}, which is not part of the Scene protocol")
        return getattr(object.__getattribute__(self, "_scene"), name)


def train(scene, target: SoftSphere, steps: int) -> None:
    """The training loop's use of a scene (sds3d.train), with an image loss instead of guidance."""
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        cams = sample_cameras(CAMS, 2, 32, 32, generator=gen)
        background = torch.ones(2, 3)
        with torch.no_grad():
            goal = target.render(cams, background).rgb
        out = scene.render(cams, background)
        loss = ((out.rgb - goal) ** 2).mean() + scene.regularization(out, step, steps)
        scene.pre_backward(step, out)
        loss.backward()
        scene.optimizer_step(step, out)


def test_a_third_scene_trains_and_exports_through_the_protocol(tmp_path):
    truth = SoftSphere(0.45, (0.8, 0.15, 0.1))
    sphere = SoftSphere(0.3, (0.5, 0.5, 0.5))
    scene = ProtocolOnly(sphere)
    assert isinstance(sphere, Scene) and not isinstance(sphere, (SplatScene, GridDensity))
    with pytest.raises(AttributeError, match="not part of the Scene protocol"):
        scene.optimizer  # noqa: B018  (the guard works)

    train(scene, truth, 150)
    assert sphere.radius_value() == pytest.approx(0.45, abs=0.01)
    np.testing.assert_allclose(torch.sigmoid(sphere.colour_logit).detach().numpy(), [0.8, 0.15, 0.1], atol=0.03)

    cfg = ExportConfig(resolution=64, eval_views=4, eval_resolution=64, turntable=False, refine_steps=10, refine_views=4)
    result = export_scene(scene, tmp_path, cfg, CAMS, "cpu")
    assert [p.name for p in result.paths] == ["mesh.glb"]  # no gaussians.ply: not a SplatScene
    assert result.threshold_rule == "auto" and result.threshold_iou > 0.97 and result.pieces == 1
    mesh = read_mesh(tmp_path / "mesh.glb")
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii / sphere.radius_value() - 1).max() < 0.04  # the sphere the renders show
    colours = mesh.visual.vertex_colors[:, :3] / 255.0
    assert np.abs(np.median(colours, axis=0) - [0.8, 0.15, 0.1]).max() < 0.06
    assert result.fidelity["mask_iou"] > 0.95 and result.fidelity["psnr_object"] > 25.0, result.fidelity
    json.dumps(result.summary())  # the summary is JSON-ready


def test_eval_cameras_render_a_disc_of_the_radius():
    """The analytic render itself: the silhouette is the disc of the sphere's projected radius."""
    sphere = SoftSphere(0.4, (1.0, 1.0, 1.0))
    cams = eval_cameras(CAMS, 1, 64, 64)
    with torch.no_grad():
        alpha = sphere.render(cams, torch.zeros(1, 3)).alpha[0, ..., 0]
    dist = float(cams.positions()[0].norm())
    half_angle = np.arcsin(0.4 / dist)
    focal = float(cams.Ks[0, 0, 0])
    disc = np.pi * (focal * np.tan(half_angle)) ** 2  # projected area in pixels
    assert float((alpha > 0.5).sum()) == pytest.approx(disc, rel=0.05)
