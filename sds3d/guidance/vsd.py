"""Variational Score Distillation (Wang et al., "ProlificDreamer: High-Fidelity and Diverse
Text-to-3D Generation with Variational Score Distillation", NeurIPS 2023).

    e_cfg = e(u) + s (e(y) - e(u))                       u = negative prompt or "", s = 7.5
    g     = w(t) (e_cfg(x_t; y) - e_phi(x_t; y, c)),     w(t) = 1 - ab_t

``e(y)`` uses the camera's view-dependent prompt; ``e_phi`` (prediction and training) gets the
plain, view-independent prompt, as in threestudio's ``stable_diffusion_vsd_guidance.py`` (the
camera input carries the view; a LoRA that also saw ", back view" would split its particle
model across four prompts). ``e_phi`` is the score of the current particles (the renders), learned online: after each
guidance step it takes ``phi_updates`` Adam steps (lr 1e-4) of the ordinary diffusion loss on
the *detached* latents, with ``t ~ U[0, T)``, fresh noise, the target of the prior's
prediction type (eps, or v = sqrt(ab) eps - sqrt(1-ab) x via the scheduler's ``add_noise`` /
``get_velocity``), and the camera ``c`` (the flattened 4x4 camera-to-world matrix, OpenCV
axes) zeroed with probability 0.1.

* Priors with a diffusers UNet (``prior.unet``, ``prior.scheduler``, ``prior.unet_forward``):
  ``e_phi`` is a peft LoRA adapter (rank 16, on ``to_q/to_k/to_v/to_out.0``) added to the
  *same* UNet, so no base weight is copied; the adapter weights are kept in float32 even on a
  float16 UNet. The base predictions (``e(y)``, ``e(u)``, one ``predict_noise`` call) run
  with the adapter disabled; ``e_phi`` runs in a second call with it enabled. Camera
  conditioning: a ``TimestepEmbedding(16, time_embed_dim)`` (last layer zero-initialised,
  so ``e_phi`` starts as the base ``e(y)``) is put in the UNet's ``class_embedding`` slot only
  while ``e_phi`` runs (``class_embed_type`` None: ``emb = time_emb + class_embedding(c)``)
  and the camera is passed as ``class_labels``; outside, the slot is restored (None) and the
  adapter disabled, so the prior behaves as the plain base model for everyone else.
* Other priors (the exemplar prior): :class:`sds3d.guidance.particle_denoiser.
  ParticleDenoiserScore`, a small trainable UNet with the same camera embedding.

Timesteps default to ProlificDreamer's schedule: t in [0.02, 0.98] T, t_max -> 0.5 after
20% of the steps (5000 of 25000 in the paper). ``state_dict`` holds the adapter (or
denoiser) weights, the camera embedding and the optimizer, so a resumed run continues exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sds3d.cameras import Cameras
from sds3d.guidance.common import ClipMode, TimestepConfig, Weighting, finish, noisy, sample_timesteps, weight
from sds3d.guidance.particle_denoiser import ParticleDenoiserScore
from sds3d.guidance.perp_neg import PerpNeg
from sds3d.prompts import PromptSet
from sds3d.types import GuidanceOutput, Prior, SDS3DError, to_epsilon

ADAPTER_NAME = "sds3d_vsd_phi"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass(frozen=True)
class VSDConfig:
    """Variational Score Distillation (ProlificDreamer)."""

    guidance_scale: float = 7.5
    """Classifier-free guidance scale s of the pretrained score."""
    lora_rank: int = 16
    """Rank of the LoRA adapter that plays e_phi (UNet priors)."""
    lora_alpha: float | None = None
    """LoRA alpha (None: equal to the rank, i.e. scale 1)."""
    lr: float = 1e-4
    """Adam learning rate of e_phi (LoRA + camera embedding, or the small denoiser)."""
    phi_updates: int = 1
    """e_phi optimizer steps per guidance step."""
    camera_dropout: float = 0.1
    """Probability of zeroing the camera while training e_phi."""
    denoiser_width: int = 32
    """Channels of the small denoiser used for priors without a UNet (exemplar)."""
    timesteps: TimestepConfig = field(default_factory=lambda: TimestepConfig(anneal="step", t_max_end=0.5, anneal_at=0.2))
    """Timestep range and annealing (default: ProlificDreamer's t_max 0.98 -> 0.5 after 20%)."""
    weighting: Weighting = "sds"
    """w(t): sds = 1 - alphas_cumprod[t], uniform = 1."""
    grad_clip: float | None = None
    """Clip g (None: off): elements to [-c, c], or per-sample L2 norm to c (see grad_clip_mode)."""
    grad_clip_mode: ClipMode = "value"
    """value: clamp each element of g; norm: rescale each sample's g to L2 norm <= grad_clip."""

    def __post_init__(self) -> None:
        if self.lora_rank <= 0 or self.lr <= 0 or self.phi_updates < 0 or not 0.0 <= self.camera_dropout <= 1.0:
            raise SDS3DError("--vsd options: lora-rank and lr must be positive, phi-updates >= 0, camera-dropout in [0, 1]")

    def setup(self, prior: Prior, prompts: PromptSet) -> VSDGuidance:
        return VSDGuidance(self, prior, prompts)


class ParticleScore(Protocol):
    """e_phi: the learned score of the current particles."""

    def predict(self, x_t: Tensor, t: Tensor, cond: Any, camera: Tensor) -> Tensor: ...

    def train_step(self, x0: Tensor, cond: Any, camera: Tensor) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CameraEmbedding(nn.Module):
    """Flattened c2w [B,16] -> [B, time_embed_dim], float32 whatever the UNet dtype."""

    def __init__(self, time_embed_dim: int) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding

        self.mlp = TimestepEmbedding(16, time_embed_dim)
        nn.init.zeros_(self.mlp.linear_2.weight)
        nn.init.zeros_(self.mlp.linear_2.bias)

    def forward(self, camera: Tensor) -> Tensor:
        return self.mlp(camera.float())


class LoraScore:
    """e_phi as a LoRA adapter on the prior's own UNet plus a camera embedding."""

    def __init__(self, prior: Any, cfg: VSDConfig) -> None:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import cast_adapter_dtype

        self.prior = prior
        self.camera_dropout = cfg.camera_dropout
        unet = prior.unet
        if getattr(unet, "class_embedding", None) is not None:
            raise SDS3DError("VSD needs a UNet without class conditioning (its camera embedding uses that slot); use --guidance sds")
        if ADAPTER_NAME in (getattr(unet, "peft_config", None) or {}):
            unet.delete_adapters(ADAPTER_NAME)  # a previous run on the same prior: start afresh
        alpha = cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=alpha, target_modules=LORA_TARGETS), adapter_name=ADAPTER_NAME)
        cast_adapter_dtype(unet, ADAPTER_NAME)  # float32 adapter weights on a float16 UNet
        unet.disable_adapters()
        self.lora_names = [n for n, _ in unet.named_parameters() if f".{ADAPTER_NAME}." in n]
        params = dict(unet.named_parameters())
        self.lora_params = [params[n] for n in self.lora_names]
        time_embed_dim = unet.time_embedding.linear_2.out_features
        self.camera_embedding = CameraEmbedding(time_embed_dim).to(prior.device)
        self.optimizer = torch.optim.Adam(self.lora_params + list(self.camera_embedding.parameters()), lr=cfg.lr)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Adapter on and the camera embedding in the class-embedding slot, then restored."""
        unet = self.prior.unet
        previous = unet.class_embedding
        unet.enable_adapters()
        unet.class_embedding = self.camera_embedding
        try:
            yield
        finally:
            unet.class_embedding = previous
            unet.disable_adapters()

    @torch.no_grad()
    def predict(self, x_t: Tensor, t: Tensor, cond: Any, camera: Tensor) -> Tensor:
        with self.active():
            out = self.prior.unet_forward(x_t, t, cond, class_labels=camera)
        return to_epsilon(out, x_t, t, self.prior.alphas_cumprod, self.prior.prediction_type)

    def train_step(self, x0: Tensor, cond: Any, camera: Tensor) -> Tensor:
        scheduler, prior = self.prior.scheduler, self.prior
        x0 = x0.detach().float()
        b = x0.shape[0]
        t = torch.randint(0, prior.num_train_timesteps, (b,), device=x0.device)
        eps = torch.randn_like(x0)
        x_t = scheduler.add_noise(x0, eps, t)
        if prior.prediction_type == "epsilon":
            target = eps
        elif prior.prediction_type == "v_prediction":
            target = scheduler.get_velocity(x0, eps, t)
        else:
            target = x0
        keep = (torch.rand(b, 1, device=x0.device) >= self.camera_dropout).float()
        with self.active():  # backward inside: disabling the adapter clears requires_grad
            out = prior.unet_forward(x_t, t, cond, class_labels=camera * keep)
            loss = F.mse_loss(out.float(), target.float())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        return {
            "lora": {n: p.detach().clone() for n, p in zip(self.lora_names, self.lora_params)},
            "camera_embedding": self.camera_embedding.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lora = state["lora"]
        if sorted(lora) != sorted(self.lora_names):
            raise SDS3DError("the checkpoint's VSD LoRA does not match this UNet/rank: resume with the same --prior and --vsd.lora-rank")
        with torch.no_grad():
            for n, p in zip(self.lora_names, self.lora_params):
                p.copy_(lora[n].to(device=p.device, dtype=p.dtype))
        self.camera_embedding.load_state_dict(state["camera_embedding"])
        self.optimizer.load_state_dict(state["optimizer"])


class VSDGuidance:
    """The :class:`sds3d.types.Guidance` for VSD."""

    def __init__(self, cfg: VSDConfig, prior: Prior, prompts: PromptSet) -> None:
        self.cfg = cfg
        self.prior = prior
        self.prompts = prompts
        self.perp_neg = PerpNeg(prompts)
        self.phi: ParticleScore
        if getattr(prior, "unet", None) is not None and hasattr(prior, "unet_forward") and hasattr(prior, "scheduler"):
            self.phi = LoraScore(prior, cfg)
        else:
            with torch.no_grad():  # probe the prior's image space for the denoiser's channels
                channels = prior.encode_images(torch.full((1, 64, 64, 3), 0.5, device=prior.device)).shape[1]
            self.phi = ParticleDenoiserScore(channels, prior.alphas_cumprod, prior.device, cfg.lr, cfg.camera_dropout, cfg.denoiser_width)

    def __call__(self, rgb: Tensor, cameras: Cameras, step: int, max_steps: int, background: Tensor | None = None) -> GuidanceOutput:
        prior, cfg = self.prior, self.cfg
        x = prior.encode_images(rgb)
        b = x.shape[0]
        t = sample_timesteps(cfg.timesteps, b, step, max_steps, prior.num_train_timesteps, x.device)
        eps = torch.randn_like(x)
        x_t = noisy(x.detach(), t, eps, prior.alphas_cumprod)
        cond = prior.condition(self.prompts.for_cameras(cameras))
        cond_phi = prior.condition([self.prompts.prompt] * b)  # view-independent (threestudio)
        conds: list[Any] = [cond, prior.condition(self.prompts.unconditionals(b))]
        conds += [prior.condition(p) for p in self.perp_neg.prompt_lists(b)]
        e = prior.predict_noise(x_t, t, conds, cameras, background)
        e_y, e_u = e[0], e[1]
        delta = e_y - e_u
        if self.perp_neg:
            delta = delta + self.perp_neg.term(delta, e[2:], e_u, cameras)
        e_cfg = e_u + cfg.guidance_scale * delta
        camera = cameras.c2w().reshape(b, 16).to(x.device)
        e_phi = self.phi.predict(x_t, t, cond_phi, camera)
        g = weight(cfg.weighting, prior.alphas_cumprod, t) * (e_cfg - e_phi)
        phi_loss = torch.zeros((), device=x.device)
        for _ in range(cfg.phi_updates):
            phi_loss = self.phi.train_step(x, cond_phi, camera)
        return finish(x, g, t, cfg.grad_clip, cfg.grad_clip_mode, phi_loss=phi_loss)

    def state_dict(self) -> dict[str, Any]:
        return {"phi": self.phi.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "phi" not in state:
            raise SDS3DError("the checkpoint has no VSD state: resume with the --guidance it was trained with")
        self.phi.load_state_dict(state["phi"])
