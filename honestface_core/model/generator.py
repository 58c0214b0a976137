"""One-step generator: frozen SD-2.1 VAE + LoRA-adapted SD-2.1 UNet at the fixed timestep t = 399.

``z_L = E(x_L).mode() * 0.18215``; ``eps = UNet(z_L, t, p)``; ``z_hat_H = (z_L - sqrt(1 - abar_t) eps) / sqrt(abar_t)``
with ``abar_t`` taken from diffusers' ``DDPMScheduler`` built from SD-2.1's scheduler config (scaled-linear betas
0.00085..0.012, 1000 steps); ``x_hat_H = D(z_hat_H / 0.18215)``. The VAE latent is the posterior mode
(deterministic; OSDFace samples it -- our choice for reproducible restores).
"""

from __future__ import annotations

import contextlib

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn

from honestface_core.model.config import GeneratorConfig
from honestface_core.model.memory_format import cpu_channels_last, cpu_chunks


def alpha_bar(scheduler_config: dict, timestep: int) -> float:
    """``alphas_cumprod[timestep]`` of the diffusers DDPM scheduler built from ``scheduler_config``."""
    with torch.device("cpu"):  # also when the model is built under a meta/cuda default device
        scheduler = DDPMScheduler.from_config(scheduler_config)
        return float(scheduler.alphas_cumprod[timestep])


def cuda_fast_path(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Around a convolution stack on CUDA: cuDNN autotuning (``benchmark``) for this call only, the caller's other
    cuDNN settings kept and everything restored afterwards. No-op elsewhere."""
    if x.device.type != "cuda":
        return contextlib.nullcontext()
    c = torch.backends.cudnn
    return c.flags(enabled=c.enabled, benchmark=True, deterministic=c.deterministic, allow_tf32=c.allow_tf32)


def device_layout(x: torch.Tensor) -> torch.Tensor:
    """Channels-last for 4-D CUDA tensors (cuDNN's fast layout for fp16/bf16 convolutions); on CPU as
    :func:`~.memory_format.cpu_channels_last`."""
    if x.device.type == "cuda" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return cpu_channels_last(x)


class OneStepGenerator(nn.Module):
    """VAE encode -> one UNet call -> x0 estimate -> VAE decode.

    On CUDA the UNet and VAE weights are kept channels-last (set whenever the generator moves). A VAE cast to fp16
    is put back in fp32 when its config says ``force_upcast`` (as diffusers' pipelines do: SD-2.1's VAE decoder
    overflows in fp16); the UNet stays in the model's precision.

    Args:
        cfg: generator config (timestep, UNet/VAE/scheduler configs).
        unet, vae: loaded base models; when omitted they are built (random weights) from ``cfg``.
    """

    def __init__(self, cfg: GeneratorConfig, unet: UNet2DConditionModel | None = None, vae: AutoencoderKL | None = None):
        super().__init__()
        self.config = cfg
        self.unet = unet if unet is not None else UNet2DConditionModel.from_config(cfg.unet)
        self.vae = vae if vae is not None else AutoencoderKL.from_config(cfg.vae)
        self.timestep = cfg.timestep
        abar = alpha_bar(cfg.scheduler, cfg.timestep)
        self.sqrt_alpha_bar = abar**0.5
        self.sqrt_one_minus_alpha_bar = (1.0 - abar) ** 0.5
        self.scaling_factor = float(self.vae.config.scaling_factor)

    def _apply(self, fn, recurse: bool = True):
        """After every device / dtype change: the VAE upcast and the CUDA layout described above."""
        super()._apply(fn, recurse)
        if self.vae.dtype == torch.float16 and bool(getattr(self.vae.config, "force_upcast", False)):
            self.vae.float()
        if self.unet.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        return self

    def compile_modules(self) -> None:
        """``torch.compile`` the UNet and the VAE encoder / decoder in place (same modules and weight names). Each
        new input shape compiles on its first call (slow); later calls are faster (docs/restore.md)."""
        for module in (self.unet, self.vae.encoder, self.vae.decoder):
            module.compile()

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latent (B, 4, H/8, W/8) (posterior mode); channels-last and in memory-sized
        chunks on CPU (see :mod:`.memory_format`)."""
        def one(x: torch.Tensor) -> torch.Tensor:
            return self.vae.encode(device_layout(x)).latent_dist.mode().contiguous()

        with cuda_fast_path(image):
            return cpu_chunks(one, image.to(self.vae.dtype), image.shape[-2] * image.shape[-1]) * self.scaling_factor

    def x0_from_eps(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``(z - sqrt(1 - abar) * eps) / sqrt(abar)`` computed in float32, returned in ``z.dtype``."""
        out = (z.float() - self.sqrt_one_minus_alpha_bar * eps.float()) / self.sqrt_alpha_bar
        return out.to(z.dtype)

    def denoise(self, z_lq: torch.Tensor, prompt: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """One UNet call at the fixed timestep: scaled LQ latent + prompt tokens -> restored latent. ``keep``:
        optional (B, T) bool, False = token left out of cross-attention (diffusers' ``encoder_attention_mask``)."""
        t = torch.full((z_lq.shape[0],), self.timestep, device=z_lq.device, dtype=torch.long)
        x = z_lq.to(self.unet.dtype)
        with cuda_fast_path(x):
            x = x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
            eps = self.unet(x, t, encoder_hidden_states=prompt.to(self.unet.dtype), encoder_attention_mask=keep).sample
        return self.x0_from_eps(z_lq, eps)

    def decode(self, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Scaled latent -> image in [-1, 1] (clamped unless ``clamp=False``, e.g. for training losses);
        channels-last and in memory-sized chunks on CPU (see :mod:`.memory_format`)."""
        def one(x: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(device_layout(x)).sample.contiguous()

        with cuda_fast_path(z):
            scale = 2 ** (len(self.vae.config.block_out_channels) - 1)  # latent -> image pixels
            image = cpu_chunks(one, z.to(self.vae.dtype) / self.scaling_factor, z.shape[-2] * z.shape[-1] * scale**2)
        return image.clamp(-1.0, 1.0) if clamp else image
