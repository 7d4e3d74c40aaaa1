"""Cameras: the one place where conventions live.

World: right-handed, +z up. A camera at elevation ``el``, azimuth ``az`` (degrees) and
distance ``d`` sits at ``(d cos el cos az, d cos el sin az, d sin el)`` and looks at the
origin; azimuth 0 is the object's front (+x).

Renderer matrices follow gsplat: ``viewmats`` are world-to-camera 4x4 in OpenCV camera axes
(x right, y down, z forward) and ``Ks`` are 3x3 pixel intrinsics. MVDream wants
camera-to-world in OpenGL/Blender axes (x right, y up, z backward) with unit-norm
translation: :meth:`Cameras.c2w_opengl_normalized`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass
class Cameras:
    """A batch of B pinhole cameras looking at the origin."""

    viewmats: Tensor  # [B,4,4] world-to-camera, OpenCV axes
    Ks: Tensor  # [B,3,3] pixel intrinsics
    width: int
    height: int
    elevation: Tensor  # [B] degrees
    azimuth: Tensor  # [B] degrees in [-180, 180)
    distance: Tensor  # [B]
    fovy: Tensor  # [B] degrees

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def to(self, device: torch.device | str) -> "Cameras":
        return replace(
            self,
            viewmats=self.viewmats.to(device),
            Ks=self.Ks.to(device),
            elevation=self.elevation.to(device),
            azimuth=self.azimuth.to(device),
            distance=self.distance.to(device),
            fovy=self.fovy.to(device),
        )

    def __getitem__(self, idx: slice | Tensor | list[int] | int) -> "Cameras":
        if isinstance(idx, int):
            idx = [idx]
        return replace(
            self,
            viewmats=self.viewmats[idx],
            Ks=self.Ks[idx],
            elevation=self.elevation[idx],
            azimuth=self.azimuth[idx],
            distance=self.distance[idx],
            fovy=self.fovy[idx],
        )

    def resized(self, width: int, height: int) -> "Cameras":
        """Same views at another resolution (intrinsics scaled)."""
        Ks = self.Ks.clone()
        Ks[:, 0] *= width / self.width
        Ks[:, 1] *= height / self.height
        return replace(self, Ks=Ks, width=width, height=height)

    def c2w(self) -> Tensor:
        """[B,4,4] camera-to-world, OpenCV axes."""
        return torch.linalg.inv(self.viewmats)

    def positions(self) -> Tensor:
        """[B,3] camera centres in world space."""
        return self.c2w()[:, :3, 3]

    def c2w_opengl_normalized(self) -> Tensor:
        """[B,4,4] camera-to-world in OpenGL axes (y up, z back), unit-norm translation."""
        c2w = self.c2w().clone()
        c2w[:, :3, 1:3] *= -1  # flip y and z axes: OpenCV -> OpenGL
        t = c2w[:, :3, 3]
        c2w[:, :3, 3] = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        return c2w

    def rays(self) -> tuple[Tensor, Tensor]:
        """World-space rays through pixel centres: origins, unit directions [B,H,W,3]."""
        B, H, W = len(self), self.height, self.width
        dev = self.device
        v, u = torch.meshgrid(
            torch.arange(H, device=dev, dtype=torch.float32) + 0.5,
            torch.arange(W, device=dev, dtype=torch.float32) + 0.5,
            indexing="ij",
        )
        fx, fy = self.Ks[:, 0, 0].view(B, 1, 1), self.Ks[:, 1, 1].view(B, 1, 1)
        cx, cy = self.Ks[:, 0, 2].view(B, 1, 1), self.Ks[:, 1, 2].view(B, 1, 1)
        d_cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u).expand(B, H, W)], -1)
        c2w = self.c2w()
        d_world = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], d_cam)
        d_world = d_world / d_world.norm(dim=-1, keepdim=True)
        origins = c2w[:, None, None, :3, 3].expand(B, H, W, 3)
        return origins, d_world


def look_at_viewmats(positions: Tensor) -> Tensor:
    """World-to-camera (OpenCV) matrices for cameras at ``positions`` [B,3] looking at 0."""
    forward = -positions / positions.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 0.0, 1.0], device=positions.device).expand_as(forward)
    right = torch.linalg.cross(forward, up, dim=-1)
    # Straight above/below: any horizontal right vector will do.
    degenerate = right.norm(dim=-1) < 1e-6
    if degenerate.any():
        right = torch.where(degenerate[:, None], torch.tensor([0.0, 1.0, 0.0], device=positions.device), right)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(forward, right, dim=-1)
    R = torch.stack([right, down, forward], dim=1)  # rows: camera axes in world coords
    viewmats = torch.eye(4, device=positions.device).repeat(positions.shape[0], 1, 1)
    viewmats[:, :3, :3] = R
    viewmats[:, :3, 3] = -(R @ positions[:, :, None])[:, :, 0]
    return viewmats


def orbit_cameras(
    elevation: Tensor | list[float],
    azimuth: Tensor | list[float],
    distance: Tensor | list[float],
    fovy: Tensor | list[float],
    width: int,
    height: int,
    device: torch.device | str = "cpu",
) -> Cameras:
    """Cameras from spherical coordinates (degrees). All four inputs broadcast to [B]."""
    el, az, d, fov = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (elevation, azimuth, distance, fovy))
    el, az, d, fov = torch.broadcast_tensors(el.reshape(-1), az.reshape(-1), d.reshape(-1), fov.reshape(-1))
    az = torch.remainder(az + 180.0, 360.0) - 180.0
    el_r, az_r = torch.deg2rad(el), torch.deg2rad(az)
    pos = torch.stack(
        [d * torch.cos(el_r) * torch.cos(az_r), d * torch.cos(el_r) * torch.sin(az_r), d * torch.sin(el_r)], -1
    )
    focal = 0.5 * height / torch.tan(torch.deg2rad(fov) / 2)
    Ks = torch.zeros(len(el), 3, 3, device=device)
    Ks[:, 0, 0] = focal
    Ks[:, 1, 1] = focal
    Ks[:, 0, 2] = width / 2
    Ks[:, 1, 2] = height / 2
    Ks[:, 2, 2] = 1.0
    return Cameras(look_at_viewmats(pos), Ks, width, height, el.clone(), az.clone(), d.clone(), fov.clone())


@dataclass(frozen=True)
class CameraConfig:
    """Random orbit cameras for training (threestudio-style ranges, scene in the unit sphere)."""

    elevation_range: tuple[float, float] = (-10.0, 45.0)
    """Elevation in degrees, sampled uniformly."""
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    """Azimuth in degrees, sampled uniformly; 0 is the object's front."""
    distance_range: tuple[float, float] = (3.0, 3.5)
    """Camera distance from the origin (the scene fits the unit sphere)."""
    fovy_range: tuple[float, float] = (40.0, 45.0)
    """Vertical field of view in degrees."""
    eval_elevation: float = 15.0
    """Elevation of the evaluation/turntable orbit."""
    eval_distance: float = 3.25
    """Distance of the evaluation/turntable orbit."""
    eval_fovy: float = 42.5
    """Field of view of the evaluation/turntable orbit."""

    def max_focal(self, size: int) -> float:
        """The longest focal length (pixels) of a ``size``-pixel training camera: the narrowest
        field of view, the finest view of the scene that training gives."""
        return fov_to_focal(self.fovy_range[0], size)

    def __post_init__(self) -> None:
        for name in ("elevation_range", "azimuth_range", "distance_range", "fovy_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"--cameras.{name.replace('_', '-')}: low {lo} > high {hi}; give LOW HIGH")
        if self.distance_range[0] <= 1.0:
            raise ValueError("--cameras.distance-range must stay outside the unit sphere (> 1)")
        if not 0 < self.fovy_range[0] <= self.fovy_range[1] < 180:
            raise ValueError("--cameras.fovy-range must lie in (0, 180) degrees")


def _uniform(n: int, lo_hi: tuple[float, float], generator: torch.Generator | None) -> Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def sample_cameras(
    cfg: CameraConfig,
    batch: int,
    width: int,
    height: int,
    num_views: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Cameras:
    """Random training cameras: ``batch`` independent views, or with ``num_views=4`` groups of
    4 views sharing elevation/fov/distance at azimuths ``a + k*90``.

    ``batch`` counts cameras; with num_views > 1 it must be a multiple of num_views.
    """
    if batch % num_views != 0:
        raise ValueError(f"batch size {batch} must be a multiple of the prior's {num_views} views")
    groups = batch // num_views
    el = _uniform(groups, cfg.elevation_range, generator)
    az = _uniform(groups, cfg.azimuth_range, generator)
    d = _uniform(groups, cfg.distance_range, generator)
    fov = _uniform(groups, cfg.fovy_range, generator)
    offsets = torch.arange(num_views, dtype=torch.float32) * (360.0 / num_views)
    az = (az[:, None] + offsets[None, :]).reshape(-1)
    rep = lambda v: v.repeat_interleave(num_views)  # noqa: E731
    return orbit_cameras(rep(el), az, rep(d), rep(fov), width, height, device)


def eval_cameras(cfg: CameraConfig, n: int, width: int, height: int, device: torch.device | str = "cpu", elevation: float | None = None) -> Cameras:
    """``n`` views evenly spaced in azimuth starting at the front (turntable / evaluation)."""
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    el = cfg.eval_elevation if elevation is None else elevation
    return orbit_cameras(torch.full((n,), el), az, cfg.eval_distance, cfg.eval_fovy, width, height, device)


@dataclass(frozen=True)
class ViewConfig:
    """View-dependent prompt thresholds (DreamFusion)."""

    front_threshold: float = 45.0
    """|azimuth| below this (degrees) is the front view."""
    back_threshold: float = 135.0
    """|azimuth| above this (degrees) is the back view."""
    overhead_threshold: float = 60.0
    """Elevation above this (degrees) is the overhead view (overrides the others)."""


VIEW_NAMES = ("front", "side", "back", "overhead")


def view_buckets(elevation: Tensor, azimuth: Tensor, cfg: ViewConfig = ViewConfig()) -> list[str]:
    """Per camera: "front" | "side" | "back" | "overhead"."""
    out = []
    for el, az in zip(elevation.tolist(), azimuth.tolist()):
        az = (az + 180.0) % 360.0 - 180.0
        if el > cfg.overhead_threshold:
            out.append("overhead")
        elif abs(az) < cfg.front_threshold:
            out.append("front")
        elif abs(az) > cfg.back_threshold:
            out.append("back")
        else:
            out.append("side")
    return out


def fov_to_focal(fovy_deg: float, height: int) -> float:
    return 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
