"""Videos: a frame-list writer shared by the whole tool, and the exported mesh's turntable.

``write_video`` writes H.264 mp4 through imageio-ffmpeg (yuv420p, playable everywhere);
when no ffmpeg binary is available it writes an animated ``.gif`` beside the requested path
instead and returns that path. The mesh turntable ray-casts the exported mesh on the CPU
(``sds3d.render.raycast``, Lambert shading) on the evaluation orbit, front view first, so
it can be compared frame by frame with the scene's own ``turntable.mp4``.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch
import trimesh
from torch import Tensor

from sds3d.cameras import CameraConfig, eval_cameras
from sds3d.types import SDS3DError


def to_uint8(frames: Tensor | np.ndarray) -> np.ndarray:
    """[N,H,W,3] float in [0,1] (or uint8) -> uint8 numpy."""
    if isinstance(frames, Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    return np.round(np.clip(frames.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def ffmpeg_available() -> bool:
    try:
        import imageio_ffmpeg

        return Path(imageio_ffmpeg.get_ffmpeg_exe()).exists()
    except Exception:  # no package, or no binary for this platform
        return False


def write_video(frames: Tensor | np.ndarray, path: str | Path, fps: int = 30) -> Path:
    """Write [N,H,W,3] frames (float in [0,1] or uint8) as mp4; ``.gif`` when ffmpeg is missing.

    Returns the path actually written.
    """
    data = to_uint8(frames)
    if data.ndim != 4 or data.shape[-1] != 3 or len(data) == 0:
        raise SDS3DError(f"write_video wants frames [N,H,W,3] with N > 0, got shape {tuple(data.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ffmpeg_available():
        # yuv420p needs even sizes: pad by replicating the last row/column
        h, w = data.shape[1:3]
        data = np.pad(data, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        imageio.mimwrite(path, list(data), fps=fps, codec="libx264", quality=8, macro_block_size=1, pixelformat="yuv420p")
        return path
    gif = path.with_suffix(".gif")
    imageio.mimwrite(gif, list(data), duration=1000.0 / fps, loop=0)  # pillow: milliseconds
    return gif


def render_mesh_views(mesh: trimesh.Trimesh, cameras, shading: str = "lambert", batch: int = 8) -> tuple[Tensor, Tensor]:
    """Ray-cast ``mesh`` for every camera on a white background: (rgb [B,H,W,3], alpha [B,H,W,1])."""
    from sds3d.render.raycast import raycast_mesh

    rgbs, alphas = [], []
    for i in range(0, len(cameras), batch):
        rgb, alpha, _ = raycast_mesh(mesh, cameras[i : i + batch].to("cpu"), background=(1.0, 1.0, 1.0), shading=shading)
        rgbs.append(torch.as_tensor(rgb).float())
        alphas.append(torch.as_tensor(alpha).float())
    return torch.cat(rgbs), torch.cat(alphas)


def mesh_turntable(mesh: trimesh.Trimesh, cameras_cfg: CameraConfig, frames: int, resolution: int) -> Tensor:
    """[frames,res,res,3] Lambert-shaded turntable of the mesh on the evaluation orbit."""
    cams = eval_cameras(cameras_cfg, frames, resolution, resolution)
    rgb, _ = render_mesh_views(mesh, cams, shading="lambert")
    return rgb
