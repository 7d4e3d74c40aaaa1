"""Memory guard: refuse, before any model loads, a run that cannot fit in memory.

A run's peak memory is dominated by the diffusion priors. The estimate is

    need = sum over loaded models of  params x bytes(dtype)                     (weights)
         + VSD only: f x params(UNet) x bytes(dtype)                            (LoRA backward
               through the full UNet: its saved activations and gradient buffers, measured)
         + per image the prior encodes: act(prior) x (S / 512)^2 x w for the 2D prior at
               render size S (VAE encoder forward + backward through the render; coupled: view 0
               of each 4-view group) and act at MVDream's 256 px per view for the multi-view
               prior, w = sqrt(params(VAE) / params(SD-2.1 VAE)) the model's relative width
         + per exemplar prior loaded: its library renders and the load's temporaries
               (sds3d.priors.exemplar.library_bytes: objects x 4 num_groups x resolution^2 pixels
               x 24 bytes + 1 GiB; coupled and mvsds load a second, multi-view copy)
         + BASE (+ NERF_EXTRA for NeRF)                                         (torch, Python,
               scene, export)

Parameter counts come from the model files themselves (the tensor shapes in each
``*.safetensors`` header, or the size of an ldm ``.pt``); for a hub id that is not in the local
cache, the published SD-2.1-base / MVDream counts are used. The activation and VSD factors are
fitted to ``sds3d bench scale`` at the SD-2.1-base architecture on CPU in fp32
(docs/benchmarks.md), rounded up.

Available memory is ``--memory-limit-gib`` when given, else on CPU the smaller of
``/proc/meminfo``'s MemAvailable and the cgroup's limit minus its usage, and on CUDA the free
memory ``torch.cuda.mem_get_info`` reports. When the estimate exceeds it, the run stops with
one line that names the options that would make it fit.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from sds3d.config import MULTI_VIEW_GUIDANCE, RunConfig, is_exemplar_prior
from sds3d.priors.exemplar import library_bytes
from sds3d.types import SDS3DError

GIB = 2**30
# Published parameter counts (SD-2.1-base's diffusers folder, MVDream sd-v2.1-base-4view).
SD21_PARAMS = {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}
MVDREAM_UNET_PARAMS = 867_572_164
# Fitted constants (see the module docstring): bytes per fp32 image at 512 px through the 2D
# prior, per fp32 view at 256 px through MVDream, the VSD factor and the fixed part.
ACT_2D_BYTES_512 = 1.9 * GIB
ACT_MV_BYTES_256 = 0.75 * GIB
VSD_UNET_FACTOR = 0.75
BASE_BYTES = 1.2 * GIB
NERF_EXTRA_BYTES = 2.5 * GIB  # NeRF rows peaked 0.4-1.8 GiB above the Gaussian rows at real size (export)
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    """What a run is expected to hold at its peak, in bytes, by part."""

    weights: int
    activations: int
    base: int
    dtype: str
    library: int = 0
    """The exemplar priors' library renders."""

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.base + self.library


def safetensors_params(path: Path) -> int:
    """Number of parameters in a .safetensors file, from its header (no tensor is read)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for d in entry["shape"]:
            count *= int(d)
        total += count
    return total


def folder_params(folder: Path) -> int | None:
    """Parameters of a diffusers model folder (its safetensors files), None if it has none."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        bins = sorted(folder.glob("*.bin"))
        return sum(p.stat().st_size for p in bins) // 4 if bins else None  # assume fp32 .bin
    return sum(safetensors_params(p) for p in files)


def _model_root(name: str) -> Path | None:
    """The folder of a diffusers model: a local path, or the hub cache's snapshot if present."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or no hub library): use the published counts
        return None


def sd_params(name: str) -> dict[str, int]:
    """{unet, vae, text_encoder}: parameter counts of a Stable Diffusion model."""
    root = _model_root(name)
    counts = dict(SD21_PARAMS)
    if root is not None:
        for part in counts:
            n = folder_params(root / part) if (root / part).is_dir() else None
            if n is not None:
                counts[part] = n
    return counts


def mvdream_unet_params(model: str, checkpoint_file: str) -> int:
    """Parameters of the MVDream UNet: a converted folder's unet/, an ldm file's size, or the
    published count."""
    path = Path(model).expanduser()
    if path.is_dir():
        unet = path / "unet" if (path / "unet").is_dir() else path
        n = folder_params(unet)
        if n is not None:
            return n
        path = path / checkpoint_file
    if path.is_file():
        if path.suffix == ".safetensors":
            return safetensors_params(path)
        return path.stat().st_size // 4  # an ldm .pt/.ckpt: fp32 weights (upper bound: EMA, optimizer excluded)
    return MVDREAM_UNET_PARAMS


def estimate(cfg: RunConfig, device_type: str) -> MemoryEstimate:
    """The peak-memory estimate of ``cfg`` on a device of ``device_type`` (exemplar priors count
    their library renders)."""
    mv_name = cfg.mv_prior if cfg.mv_prior is not None else (cfg.prior if cfg.is_exemplar else cfg.mvdream.model)
    loaded = ([cfg.prior] if cfg.guidance != "mvsds" else []) + ([mv_name] if cfg.guidance in MULTI_VIEW_GUIDANCE else [])
    library = sum(library_bytes(name, cfg.exemplar) for name in loaded if is_exemplar_prior(name))
    uses_2d = cfg.guidance != "mvsds" and not cfg.is_exemplar
    uses_mv = cfg.guidance in MULTI_VIEW_GUIDANCE and not is_exemplar_prior(mv_name)
    dtype = cfg.diffusers.dtype if cfg.diffusers.dtype != "auto" else ("fp16" if device_type == "cuda" else "fp32")
    nbytes = DTYPE_BYTES[dtype]
    weights = activations = 0
    if uses_2d:
        sd = sd_params(cfg.prior)
        weights += sum(sd.values()) * nbytes
        size = max(cfg.resolutions()[0])
        images = cfg.batch_size // cfg.num_views  # coupled: the 2D prior sees view 0 of each group
        activations += int(ACT_2D_BYTES_512 * _width(sd["vae"], SD21_PARAMS["vae"]) * nbytes / 4 * images * (size / 512) ** 2)
        if cfg.guidance == "vsd" or (cfg.guidance == "coupled" and cfg.coupled.two_d == "vsd"):
            activations += int(VSD_UNET_FACTOR * sd["unet"] * nbytes)
    if uses_mv:
        sd = sd_params(cfg.mvdream.sd_model)
        weights += (mvdream_unet_params(mv_name, cfg.mvdream.checkpoint_file) + sd["vae"] + sd["text_encoder"]) * nbytes
        activations += int(ACT_MV_BYTES_256 * _width(sd["vae"], SD21_PARAMS["vae"]) * nbytes / 4 * cfg.batch_size * (cfg.mvdream.image_size / 256) ** 2)
    base = BASE_BYTES + (NERF_EXTRA_BYTES if cfg.scene == "nerf" else 0)
    return MemoryEstimate(weights=weights, activations=activations, base=int(base), dtype=dtype, library=library)


def _width(params: int, reference: int) -> float:
    """Channel width relative to the reference model: activations scale with width, parameters
    with its square."""
    return (params / reference) ** 0.5


def available_bytes(device: torch.device) -> int | None:
    """Memory a new run can use now on ``device`` (None when it cannot be read)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    avail: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    limit = _cgroup_room()
    if limit is not None:
        avail = limit if avail is None else min(avail, limit)
    return avail


def _cgroup_room() -> int | None:
    """The cgroup memory limit minus its usage (v2, else v1); None when unlimited."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            text = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if text == "max" or int(text) >= 2**60:
            return None
        return max(int(text) - usage, 0)
    return None


def check_memory(cfg: RunConfig, device: torch.device, available: int | None = None) -> MemoryEstimate | None:
    """Raise a one-line :class:`SDS3DError` when ``cfg`` is not expected to fit; returns the
    estimate. ``available``: bytes to compare with (default: ``--memory-limit-gib``, else what
    :func:`available_bytes` reads). ``--memory-limit-gib 0`` turns the check off."""
    if cfg.memory_limit_gib is not None and cfg.memory_limit_gib <= 0:
        return None
    est = estimate(cfg, device.type)
    if available is None:
        available = int(cfg.memory_limit_gib * GIB) if cfg.memory_limit_gib is not None else available_bytes(device)
    if available is None or est.total <= available:
        return est
    where = "GPU memory" if device.type == "cuda" else "memory"
    hints = []
    if est.library:
        hints.append("a smaller --exemplar.resolution or --exemplar.num-groups, or fewer meshes in the library")
    if device.type != "cuda" and est.weights:
        hints.append("use --device cuda")
    if est.dtype == "fp32" and est.weights:
        hints.append("--diffusers.dtype bf16" if device.type != "cuda" else "--diffusers.dtype fp16")
    hints.append("a smaller --batch-size or --resolution")
    if cfg.guidance == "coupled":
        hints.append("--mv-device on a second GPU" if device.type == "cuda" else "--guidance sds or mvsds (one prior)")
    if cfg.guidance == "vsd":
        hints.append("--guidance sds (no LoRA training)")
    raise SDS3DError(
        f"--guidance {cfg.guidance} at {est.dtype} on {device.type} needs ~{est.total / GIB:.1f} GiB "
        f"(weights {est.weights / GIB:.1f}, activations {est.activations / GIB:.1f}"
        + (f", exemplar library {est.library / GIB:.1f}" if est.library else "")
        + "), "
        f"{available / GIB:.1f} GiB {where} available: {', '.join(hints)} "
        "(--memory-limit-gib 0 skips this check)"
    )
