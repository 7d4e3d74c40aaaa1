"""The exemplar prior: an exact diffusion score over a library of rendered meshes.

The data distribution is the finite set of library renders ``y_i`` (pixels in [-1, 1],
``resolution``^2, see :mod:`sds3d.priors.exemplar_library`). With the DDPM forward process of
Stable Diffusion (scaled-linear betas 0.00085 -> 0.012, 1000 steps) the optimal denoiser is the
closed-form posterior mean (e.g. Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models", NeurIPS 2022, eq. 57, in DDPM form):

    x0_hat(x_t) = sum_i softmax_i( -|x_t - sqrt(ab) y_i|^2 / (2 (1 - ab)) ) y_i
    eps(x_t)    = (x_t - sqrt(ab) x0_hat) / sqrt(1 - ab)

The ``|x_t|^2`` term is the same for every ``i`` and drops out of the softmax, so the logits are
``(sqrt(ab) x_t . y_i - ab |y_i|^2 / 2) / (1 - ab)``: one matmul (chunked; over the images of the
first to the last object that some conditioning admits, as the others get weight 0) shared by
all K conditionings, a masked softmax per conditioning (log-sum-exp stable), then
one weighted sum that reads only the images whose weight exceeds 1e-12 in some row (below
float32 resolution; at small t that is a handful of images, at large t all of them).

Conditionings (:meth:`ExemplarPrior.condition`): a prompt selects the images of the library
objects it names (case-insensitive; a match when either text contains the other, so
"a DSLR photo of a snowman" names "a snowman"). ``""`` selects all objects (unconditional).
A comma-separated text whose parts name library objects (a negative prompt) selects those;
one that names none (e.g. NFSD's "unrealistic, blurry, ...") selects all objects, i.e.
``e(neg)`` falls back to the unconditional ``e(0)``. A text without commas that names no
object raises an error listing the library's prompts. With ``view_dependent`` a suffix
", front view" / ", side view" / ", back view" / ", overhead view" further restricts to the
library images of that view bucket (:func:`sds3d.cameras.view_buckets`); when the bucket has no
images (overhead views are outside the training elevations) the restriction is dropped.

Multi-view mode (``multi_view=True``, ``num_views=4``): samples come in groups of 4 views 90
degrees apart and the posterior is over library *groups* (the joint distribution of their 4
views; every group also enters in its 4 cyclic view orders), with log-weights

    sum_k [ -|x_t^k - sqrt(ab_k) y_g^k|^2 / (2 (1 - ab_k)) ]
        - sum_k [ (el_k - el_g^k)^2 + wrap(az_k - az_g^k)^2 ] / (2 camera_sigma^2)

so the chosen groups' views line up with the requested cameras. The group's object set comes
from the first view's prompt; view suffixes are ignored (the cameras do that job).

Backgrounds (``predict_noise(..., background=b)``, [B,3] in [0,1]): the library is rendered
on white with its coverage ``alpha``, so the image of ``y_i`` on the render's own background is
``y_i(b) = y_i + (b - 1) cover_i`` per channel, ``cover_i = 2 (1 - alpha_i)``. The logits then
need ``x . y_i(b) = x . y_i + sum_c (b_c - 1) x_c . cover_i`` (one more matmul, over the pixels
of each channel) and ``|y_i(b)|^2 = |y_i|^2 + 2 sum_c (b_c - 1) y_ic . cover_i + |b - 1|^2
|cover_i|^2`` (precomputed per image), and the posterior mean adds ``(b - 1) sum_i w_i cover_i``.
On white alone, white Gaussians cost the guidance nothing: empty space fills with white fog
(under a chair's seat, between a table's legs) and white surfaces can stay half transparent,
and both end up in the mesh. Random backgrounds make every colour visible; the exemplar recipe
trains on white for the first half, then gives each image a random colour with chance 0.5
(``--white-start``, ``--random-background-p``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from sds3d.cameras import VIEW_NAMES, CameraConfig, Cameras, view_buckets
from sds3d.priors.exemplar_library import (
    BUILTIN,
    DEFAULT_CACHE,
    LibraryObject,
    builtin_library,
    load_library_dir,
    mesh_files,
    render_library,
)
from sds3d.types import SDS3DError

VIEW_SUFFIXES = tuple(f", {v} view" for v in VIEW_NAMES)
LIBRARY_BYTES_PER_PIXEL = 24
"""Peak bytes of a loaded prior per library pixel: the float32 RGB images (12) and coverage (4)
it holds, and the loading's temporaries. Measured peak RSS above the meshes (sds3d.memory uses
it): 22 bytes per pixel for the 28 procedural train objects at 64 px from the render cache
(987 MB), 45 for the 7 built-in ones at 128 px rendered anew (1.9 GB, mesh ray casting included),
of which LIBRARY_LOAD_BYTES covers the part that does not grow with the library."""
LIBRARY_LOAD_BYTES = 2**30
"""Fixed part of a load's peak (ray casting, the scheduler, the cache files), see above."""
WEIGHT_FLOOR = 1e-12
"""Posterior weights below this (in every row) are skipped in the weighted sum (float32 noise)."""


@dataclass(frozen=True)
class ExemplarConfig:
    """The exemplar prior (exact score over rendered library meshes; runs on CPU)."""

    resolution: int = 64
    """Size of the library renders and of the prior's pixel space."""
    num_groups: int = 96
    """Camera groups per object (4 views each: 96 -> 384 images per object)."""
    view_dependent: bool = True
    """Restrict ', front view' etc. prompts to library images of that view bucket."""
    multi_view: bool = False
    """Joint distribution of 4 views 90 degrees apart, weighted by camera closeness."""
    camera_sigma: float = 15.0
    """Width (degrees) of the Gaussian camera-closeness kernel of the multi-view mode."""
    chunk: int = 1024
    """Library images per matmul chunk (bounds memory for large libraries)."""
    cache_dir: Path = DEFAULT_CACHE
    """Where the library renders are cached."""


@dataclass(frozen=True)
class ExemplarCondition:
    """Opaque conditioning: allowed objects and an optional view bucket."""

    objects: tuple[int, ...]
    bucket: str | None


def _image_sums(images: Tensor, cover: Tensor, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """|y_i|^2 [M], y_ic . cover_i [M,3] and |cover_i|^2 [M] of images [M,3,P] and covers [M,P],
    summed in float64 a chunk of images at a time (float64 copies of the whole library would
    need 4x its memory)."""
    sq_norms, image_cover, cover_sq = [], [], []
    for y, c in zip(images.split(chunk), cover.split(chunk)):
        y, c = y.double(), c.double()
        sq_norms.append((y**2).sum((1, 2)).float())
        image_cover.append((y * c[:, None]).sum(-1).float())
        cover_sq.append((c**2).sum(-1).float())
    return torch.cat(sq_norms), torch.cat(image_cover), torch.cat(cover_sq)


def _strip_suffix(prompt: str) -> tuple[str, str | None]:
    for view, suffix in zip(VIEW_NAMES, VIEW_SUFFIXES):
        if prompt.endswith(suffix):
            return prompt[: -len(suffix)], view
    return prompt, None


def _norm(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


class ExemplarPrior:
    """Closed-form posterior-mean denoiser over library renders (implements ``Prior``)."""

    prediction_type = "epsilon"
    num_train_timesteps = 1000

    def __init__(self, objects: list[LibraryObject], device: torch.device, cfg: ExemplarConfig = ExemplarConfig(), camera_cfg: CameraConfig = CameraConfig()) -> None:
        from diffusers import DDPMScheduler

        self.cfg, self.device, self.objects = cfg, torch.device(device), objects
        self.camera_cfg = camera_cfg
        self.num_views = 4 if cfg.multi_view else 1
        sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        self.alphas_cumprod = sched.alphas_cumprod.to(torch.float32).to(self.device)
        lib = render_library(objects, cfg.resolution, cfg.num_groups, camera_cfg, cfg.cache_dir)
        self.prompts = lib.prompts
        n_obj, G, V = lib.images.shape[:3]
        self.images = lib.images.reshape(n_obj * G * V, -1).to(self.device)  # [M, D], object-major
        # On a background b the image is y + (b - 1) * cover (per channel), cover = 2 (1 - alpha),
        # made in place from the alpha renders (the library is held once: LIBRARY_BYTES_PER_PIXEL).
        self.cover = lib.alpha.reshape(n_obj * G * V, -1).mul_(-2.0).add_(2.0).to(self.device)  # [M, R*R]
        M, P = self.cover.shape
        self.sq_norms, self.image_cover, self.cover_sq = _image_sums(self.images.reshape(M, 3, P), self.cover, cfg.chunk)
        self.object_id = torch.arange(n_obj).repeat_interleave(G * V).to(self.device)  # [M]
        self.n_objects, self.images_per_object = n_obj, G * V
        el, az = lib.elevation.reshape(-1), lib.azimuth.reshape(-1)  # [G*V]
        buckets = torch.tensor([VIEW_NAMES.index(b) for b in view_buckets(el, az)])
        self.bucket_id = buckets.repeat(n_obj).to(self.device)  # [M]
        self.lib_elevation = lib.elevation.to(self.device)  # [G, 4]
        self.lib_azimuth = lib.azimuth.to(self.device)
        self._cache: dict[str, ExemplarCondition] = {}
        self._masks: dict[ExemplarCondition, Tensor] = {}

    # ------------------------------------------------------------------ pixel space

    def encode_images(self, rgb: Tensor) -> Tensor:
        x = rgb.permute(0, 3, 1, 2).to(torch.float32)
        R = self.cfg.resolution
        if x.shape[-2:] != (R, R):
            x = F.interpolate(x, size=(R, R), mode="bilinear", align_corners=False, antialias=x.shape[-1] > R)
        return x * 2.0 - 1.0

    def decode(self, x: Tensor) -> Tensor:
        return ((x.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    # ------------------------------------------------------------------ prompts

    def _match(self, text: str) -> tuple[int, ...]:
        t = _norm(text)
        return tuple(i for i, p in enumerate(self.prompts) if _norm(p) in t or t in _norm(p))

    def condition(self, prompts: Sequence[str]) -> list[ExemplarCondition]:
        out = []
        for prompt in prompts:
            if prompt not in self._cache:
                self._cache[prompt] = self._condition_one(prompt)
            out.append(self._cache[prompt])
        return out

    def _condition_one(self, prompt: str) -> ExemplarCondition:
        text, bucket = _strip_suffix(prompt)
        if not self.cfg.view_dependent or self.cfg.multi_view:
            bucket = None
        everything = tuple(range(len(self.prompts)))
        if not _norm(text):
            return ExemplarCondition(everything, bucket)
        objects = self._match(text)
        if not objects and "," in text:  # a negative prompt: the objects its parts name
            objects = tuple(sorted({i for part in text.split(",") if _norm(part) for i in self._match(part)}))
            objects = objects or everything
        if not objects:
            listed = "; ".join(f"'{p}'" for p in self.prompts)
            raise SDS3DError(f"prompt '{text}' names no object of the exemplar library; use one of: {listed}")
        if bucket is not None:
            has = ((self.bucket_id == VIEW_NAMES.index(bucket)) & self._object_mask(objects)).any()
            bucket = bucket if bool(has) else None
        return ExemplarCondition(objects, bucket)

    def _object_mask(self, objects: tuple[int, ...]) -> Tensor:
        return torch.isin(self.object_id, torch.tensor(objects, device=self.device))

    def _allowed(self, cond: ExemplarCondition) -> Tensor:
        """[M] bool: library images this conditioning may use (cached per conditioning)."""
        if cond not in self._masks:
            mask = self._object_mask(cond.objects)
            if cond.bucket is not None:
                mask = mask & (self.bucket_id == VIEW_NAMES.index(cond.bucket))
            self._masks[cond] = mask
        return self._masks[cond]

    # ------------------------------------------------------------------ denoiser

    @torch.no_grad()
    def predict_noise(
        self, x_t: Tensor, t: Tensor, conditions: Sequence[list[ExemplarCondition]], cameras: Cameras | None = None,
        background: Tensor | None = None,
    ) -> Tensor:
        x_t = x_t.detach().to(self.device, torch.float32)
        B = x_t.shape[0]
        ab = self.alphas_cumprod[t.to(self.device)].view(B, 1)
        shift = None  # b - 1 per sample and channel; None: the library's own white
        if background is not None and not bool((background == 1).all()):
            shift = background.detach().to(self.device, torch.float32).reshape(B, 3) - 1.0
        allowed = torch.stack([torch.stack([self._allowed(c) for c in conds]) for conds in conditions])  # [K,B,M]
        if self.cfg.multi_view:
            x0 = self._posterior_mean_groups(x_t.reshape(B, -1), ab, allowed, cameras, shift)
        else:
            x0 = self._posterior_mean(x_t.reshape(B, -1), ab, allowed, shift)
        eps = (x_t.reshape(1, B, -1) - ab.sqrt() * x0) / (1.0 - ab).sqrt()
        return eps.reshape(len(conditions), *x_t.shape)

    def _span(self, allowed: Tensor) -> slice:
        """The library images of the first to the last object that ``allowed`` [..., M] admits
        (object-major, so a view, not a copy): the images outside it have weight 0, and a
        prompt that names one object reads 1/n_objects of the library."""
        per_object = allowed.reshape(-1, self.n_objects, self.images_per_object).any(-1).any(0)
        idx = torch.nonzero(per_object)[:, 0]
        lo, hi = (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, self.n_objects)
        return slice(lo * self.images_per_object, hi * self.images_per_object)

    def _logits(self, x: Tensor, ab: Tensor, shift: Tensor | None = None, span: slice = slice(None)) -> Tensor:
        """[B,m] log-weights of the images in ``span``, up to a per-row constant:
        (sqrt(ab) x.y - ab |y|^2 / 2) / (1 - ab), with ``y = y_white + shift * cover`` per channel
        when the renders are on another background."""
        images, cover = self.images[span], self.cover[span]
        chunks = [(lo, lo + self.cfg.chunk) for lo in range(0, len(images), self.cfg.chunk)]
        dots = torch.cat([x @ images[lo:hi].T for lo, hi in chunks], 1)
        sq = self.sq_norms[span][None]
        if shift is not None:
            B, P = x.shape[0], cover.shape[1]
            xc = torch.cat([x.reshape(B * 3, P) @ cover[lo:hi].T for lo, hi in chunks], 1).reshape(B, 3, -1)
            dots = dots + (shift[:, :, None] * xc).sum(1)
            sq = sq + 2.0 * shift @ self.image_cover[span].T + (shift**2).sum(-1, keepdim=True) * self.cover_sq[span][None]
        return (ab.sqrt() * dots - 0.5 * ab * sq) / (1.0 - ab)

    def _weighted_sum(self, w: Tensor, images: Tensor) -> Tensor:
        """w [R,N] @ images [N,D], reading only the images some row weights above WEIGHT_FLOOR."""
        used = torch.nonzero((w > WEIGHT_FLOOR).any(0))[:, 0]
        if len(used) < 0.75 * w.shape[1]:
            return w[:, used] @ images[used]
        return w @ images

    def _posterior_mean(self, x: Tensor, ab: Tensor, allowed: Tensor, shift: Tensor | None = None) -> Tensor:
        """x [B,D], ab [B,1], allowed [K,B,M], shift [B,3] or None -> x0_hat [K,B,D]."""
        span = self._span(allowed)
        allowed = allowed[..., span]
        K, B, m = allowed.shape
        logits = self._logits(x, ab, shift, span).expand(K, B, m).masked_fill(~allowed, -torch.inf)
        w = torch.softmax(logits, -1).reshape(K * B, m)
        x0 = self._weighted_sum(w, self.images[span])
        if shift is not None:  # + shift * (sum_i w_i cover_i), per channel
            x0 = x0 + (shift.repeat(K, 1)[:, :, None] * self._weighted_sum(w, self.cover[span])[:, None]).reshape(K * B, -1)
        return x0.reshape(K, B, -1)

    def _posterior_mean_groups(
        self, x: Tensor, ab: Tensor, allowed: Tensor, cameras: Cameras | None, bg_shift: Tensor | None = None
    ) -> Tensor:
        """Multi-view: posterior over library groups (x4 cyclic orders), per group of 4 samples."""
        if cameras is None or x.shape[0] % 4:
            raise SDS3DError("the multi-view exemplar prior needs cameras and a batch of groups of 4 views")
        span = self._span(allowed)
        allowed = allowed[..., span]
        K, B, M = allowed.shape
        S, G = B // 4, self.lib_elevation.shape[0]
        n_obj = M // (4 * G)  # the objects in the span
        logits = self._logits(x, ab, bg_shift, span).reshape(S, 4, n_obj, G, 4)  # per view against every image
        el = cameras.elevation.to(self.device).reshape(S, 4)
        az = cameras.azimuth.to(self.device).reshape(S, 4)
        total = []
        for shift in range(4):  # library view (k + shift) % 4 plays requested view k
            order = [(k + shift) % 4 for k in range(4)]
            data = sum(logits[:, k, :, :, order[k]] for k in range(4))  # [S, n_obj, G]
            d_el = el[:, None, :] - self.lib_elevation[None, :, order]  # [S, G, 4]
            d_az = torch.remainder(az[:, None, :] - self.lib_azimuth[None, :, order] + 180.0, 360.0) - 180.0
            close = -(d_el**2 + d_az**2).sum(-1) / (2.0 * self.cfg.camera_sigma**2)  # [S, G]
            total.append(data + close[:, None, :])
        total = torch.stack(total, -1)  # [S, n_obj, G, shift]
        obj_ok = allowed.reshape(K, S, 4, n_obj, G * 4)[:, :, 0].any(-1)  # [K, S, n_obj] (first view's prompt)
        w = total[None].masked_fill(~obj_ok[..., None, None], -torch.inf)  # [K,S,n_obj,G,shift]
        w = torch.softmax(w.reshape(K, S, -1), -1).reshape(K * S, n_obj * G, 4)
        imgs = self.images[span].reshape(n_obj * G, 4, -1)
        covers = self.cover[span].reshape(n_obj * G, 4, -1)
        x0 = torch.zeros(K * S, 4, x.shape[1], device=self.device)
        bg = None if bg_shift is None else bg_shift.reshape(S, 4, 3).repeat(K, 1, 1)  # [K*S, 4, 3]
        for shift in range(4):
            for k in range(4):
                x0[:, k] += self._weighted_sum(w[..., shift], imgs[:, (k + shift) % 4])
                if bg is not None:
                    c = self._weighted_sum(w[..., shift], covers[:, (k + shift) % 4])  # [K*S, R*R]
                    x0[:, k] += (bg[:, k, :, None] * c[:, None]).reshape(K * S, -1)
        return x0.reshape(K, S * 4, -1)

    # ------------------------------------------------------------------ ground truth

    def truth(self, prompt: str) -> LibraryObject:
        """The library object a (positive) prompt names."""
        objects = self._condition_one(prompt).objects
        if len(objects) != 1:
            raise SDS3DError(f"prompt '{prompt}' names {len(objects)} library objects; name exactly one")
        return self.objects[objects[0]]

    def render_truth(self, prompt: str, cameras: Cameras) -> tuple[Tensor, Tensor]:
        """Ground-truth renders of the prompt's object: rgb [B,H,W,3] (white bg, Lambert), alpha."""
        from sds3d.render.raycast import raycast_mesh

        rgb, alpha, _ = raycast_mesh(self.truth(prompt).mesh, cameras, (1.0, 1.0, 1.0), "lambert")
        return rgb, alpha


def load_exemplar(spec: str, device: torch.device, cfg: ExemplarConfig = ExemplarConfig()) -> ExemplarPrior:
    """``"exemplar"`` (built-in library), ``"exemplar:procedural-train"`` /
    ``"exemplar:procedural-test"`` (a split of :mod:`sds3d.priors.procedural`) or
    ``"exemplar:DIR"`` (a folder of meshes)."""
    from sds3d.priors.procedural import parse_spec, procedural_library

    split = parse_spec(spec[len("exemplar:") :]) if spec.startswith("exemplar:") else None
    if spec == "exemplar":
        objects = builtin_library()
    elif split is not None:
        objects = procedural_library(split)
    elif spec.startswith("exemplar:") and spec[len("exemplar:") :]:
        objects = load_library_dir(spec[len("exemplar:") :])
    else:
        raise SDS3DError(
            f"--prior {spec!r}: write 'exemplar', 'exemplar:procedural-train', 'exemplar:procedural-test' or 'exemplar:DIR' (a folder of .glb/.obj/.ply meshes)"
        )
    return ExemplarPrior(objects, device, cfg)


def library_size(spec: str) -> int:
    """Number of objects of the library ``spec`` names (as :func:`load_exemplar` reads it), without
    building or loading any mesh."""
    from sds3d.priors.procedural import FAMILIES, SPLITS, parse_spec

    if spec == "exemplar":
        return len(BUILTIN)
    name = spec[len("exemplar:") :]
    split = parse_spec(name) if spec.startswith("exemplar:") else None
    if split is not None:
        return len(FAMILIES) * len(SPLITS[split])
    return len(mesh_files(Path(name).expanduser()))


def library_bytes(spec: str, cfg: ExemplarConfig) -> int:
    """Peak memory of loading the prior ``spec`` with ``cfg`` (its library renders and the load)."""
    pixels = library_size(spec) * 4 * cfg.num_groups * cfg.resolution**2
    return pixels * LIBRARY_BYTES_PER_PIXEL + LIBRARY_LOAD_BYTES
