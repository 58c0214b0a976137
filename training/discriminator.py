"""Latent discriminator conditioned on the prompt tokens p (our choice; the paper only says the discriminator
sees z_H / z_hat_H and p).

Design (our choice, diffusion-GAN style): the latent is noised to a random timestep t in ``noise_t`` with the
SD-2.1 schedule, then a small conv patch network scores it; conditioning is a projection term
``<h(z_t), W·pool(p)>`` per patch (projection discriminator) plus a timestep embedding added to the features.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class LatentDiscriminator(nn.Module):
    """Patch discriminator on noised latents, conditioned on the prompt.

    Args:
        latent_channels: channels of the VAE latent (4 for SD-2.1).
        cond_dim: width of the prompt tokens p (1024 for SD-2.1).
        alphas_cumprod: (T,) cumulative alphas of the diffusion schedule (from diffusers' scheduler).
        channels: base width; depth: number of stride-2 stages; noise_t: (low, high) timestep range.
    """

    def __init__(self, latent_channels: int, cond_dim: int, alphas_cumprod: torch.Tensor,
                 channels: int = 64, depth: int = 3, noise_t: tuple[int, int] = (0, 250)):
        super().__init__()
        self.noise_t = (int(noise_t[0]), int(noise_t[1]))
        self.register_buffer("alphas_cumprod", alphas_cumprod.float().clone(), persistent=False)
        self.stem = nn.Conv2d(latent_channels, channels, 3, padding=1)
        blocks, c = [], channels
        for i in range(depth):
            c_out = channels * min(2 ** (i + 1), 8)
            blocks.append(nn.Sequential(nn.Conv2d(c, c_out, 4, stride=2, padding=1),
                                        nn.GroupNorm(min(32, c_out // 4), c_out), nn.LeakyReLU(0.2)))
            c = c_out
        self.blocks = nn.ModuleList(blocks)
        self.time = nn.Sequential(nn.Linear(channels, c), nn.SiLU(), nn.Linear(c, c))
        self.cond = nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, c))
        self.head = nn.Conv2d(c, 1, 3, padding=1)
        self.feat_channels = c

    def noise(self, z: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise latents to random timesteps; returns (z_t, t)."""
        lo, hi = self.noise_t
        t = torch.randint(lo, hi + 1, (z.shape[0],), device=z.device, generator=generator)
        abar = self.alphas_cumprod.to(z.device)[t].view(-1, 1, 1, 1).to(z.dtype)
        eps = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
        return abar.sqrt() * z + (1 - abar).sqrt() * eps, t

    def forward(self, z: torch.Tensor, prompt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Patch logits (B, 1, h, w) for (already noised) latents ``z`` at timesteps ``t`` given tokens (B, T, D)."""
        h = F.leaky_relu(self.stem(z), 0.2)
        for block in self.blocks:
            h = block(h)
        h = h + self.time(_timestep_embedding(t, self.stem.out_channels).to(h.dtype))[:, :, None, None]
        cond = self.cond(prompt.mean(dim=1).to(h.dtype))
        return self.head(h) + (h * cond[:, :, None, None]).sum(1, keepdim=True) / math.sqrt(self.feat_channels)
