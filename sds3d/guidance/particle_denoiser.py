"""A small trainable denoiser that plays VSD's particle score ``e_phi`` for priors that have no
UNet to LoRA-adapt (the exemplar prior: pixels in [-1, 1], 3x64x64).

The network is a diffusers ``UNet2DModel`` (two resolutions, no attention) whose class-
embedding slot (``class_embed_type="identity"``) receives a learned embedding of the
flattened 4x4 camera-to-world matrix (``TimestepEmbedding(16, time_embed_dim)``), so the
camera is added to the time embedding exactly as in the LoRA path of :mod:`sds3d.guidance.vsd`.

It predicts epsilon with a preconditioning that makes the untrained network already the best
*linear* denoiser for data of standard deviation ``sigma_data`` (0.5, images in [-1, 1]):
with ``a = sqrt(ab_t)``, ``s = sqrt(1 - ab_t)``, ``d = a^2 sigma^2 + s^2``,

    e_phi(x_t) = (s / d) x_t + (a sigma / sqrt(d)) F(x_t / sqrt(d), t, camera)

and the last convolution of ``F`` starts at zero (so ``e_phi`` starts at ``(s / d) x_t``,
the Wiener estimate of the noise). Training is the ordinary epsilon loss
``|| e_phi(x_t) - eps ||^2`` with ``t ~ U[0, T)`` on the detached particles, camera zeroed with
probability ``camera_dropout``; its own Adam optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sds3d.guidance.common import noisy

SIGMA_DATA = 0.5


class ParticleDenoiser(nn.Module):
    """eps(x_t, t, camera) for images [B, channels, H, W] (H, W divisible by 2)."""

    def __init__(self, channels: int, alphas_cumprod: Tensor, width: int = 32) -> None:
        super().__init__()
        from diffusers import UNet2DModel
        from diffusers.models.embeddings import TimestepEmbedding

        self.net = UNet2DModel(
            in_channels=channels,
            out_channels=channels,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            block_out_channels=(width, 2 * width),
            layers_per_block=1,
            norm_num_groups=min(8, width),
            add_attention=False,
            class_embed_type="identity",
        )
        time_embed_dim = width * 4
        self.camera_embedding = TimestepEmbedding(16, time_embed_dim)
        nn.init.zeros_(self.net.conv_out.weight)
        nn.init.zeros_(self.net.conv_out.bias)
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().float().clone(), persistent=False)

    def forward(self, x_t: Tensor, t: Tensor, camera: Tensor) -> Tensor:
        """x_t [B,C,H,W], t [B] long, camera [B,16] (flattened c2w; zeros = dropped) -> eps."""
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        a, s = ab.sqrt(), (1.0 - ab).sqrt()
        d = ab * SIGMA_DATA**2 + (1.0 - ab)
        cam = self.camera_embedding(camera.float())
        f = self.net(x_t.float() / d.sqrt(), t, class_labels=cam).sample
        return (s / d) * x_t.float() + (a * SIGMA_DATA / d.sqrt()) * f


class ParticleDenoiserScore:
    """VSD's ``e_phi`` backed by a :class:`ParticleDenoiser` and its Adam optimizer."""

    def __init__(self, channels: int, alphas_cumprod: Tensor, device: torch.device, lr: float, camera_dropout: float, width: int = 32) -> None:
        self.model = ParticleDenoiser(channels, alphas_cumprod, width).to(device)
        self.alphas_cumprod = alphas_cumprod
        self.camera_dropout = camera_dropout
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    @torch.no_grad()
    def predict(self, x_t: Tensor, t: Tensor, cond: Any, camera: Tensor) -> Tensor:
        """eps_phi(x_t; camera) (``cond`` is unused: the particles share one prompt)."""
        return self.model(x_t, t, camera)

    def train_step(self, x0: Tensor, cond: Any, camera: Tensor) -> Tensor:
        """One Adam step of the epsilon loss on detached particles; returns the loss (detached)."""
        x0 = x0.detach().float()
        b = x0.shape[0]
        t = torch.randint(0, self.alphas_cumprod.shape[0], (b,), device=x0.device)
        eps = torch.randn_like(x0)
        keep = (torch.rand(b, 1, device=x0.device) >= self.camera_dropout).float()
        pred = self.model(noisy(x0, t, eps, self.alphas_cumprod), t, camera.float() * keep)
        loss = F.mse_loss(pred, eps)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
