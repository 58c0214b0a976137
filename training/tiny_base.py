"""The tiny random-weight base (UNet + VAE) used by the ``tiny`` variant in CI and smoke tests.

SD-2.1's VAE is pretrained; a random tiny VAE cannot represent faces at all, so a frozen random VAE would make
stage 2 meaningless. For the tiny variant only, the VAE is therefore first fitted as an autoencoder on the
training crops (HQ and LQ, L1 + a small KL term) for ``model.tiny_vae_steps`` steps (our choice); its
``scaling_factor`` is then set to 1 / std of the latents of those crops, the rule SD used to pick 0.18215, so the
fixed t = 399 mixes signal and noise as it does for SD-2.1. The VAE and the random UNet are written as a
diffusers folder and loaded like a real base.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from honestface_core.model.config import HonestFaceConfig

README = "Tiny base written by training/tiny_base.py for tests/CI: random UNet, VAE fitted on the training crops only.\n"


def fit_vae(vae, dataset, steps: int, batch_size: int = 8, lr: float = 3e-3, seed: int = 0) -> list[float]:
    """Fit ``vae`` as an autoencoder on HQ and LQ crops of ``dataset`` (positions drawn with ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    losses = []
    vae.train()
    for step in range(steps):
        pos = torch.randint(0, 1 << 30, (batch_size,), generator=gen).tolist()
        items = [dataset[p] for p in pos]
        x = torch.stack([it["hq"] if i % 2 == 0 else it["lq"] for i, it in enumerate(items)])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        loss = F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def write_tiny_base(folder: Path, mcfg: HonestFaceConfig, dataset, vae_steps: int, seed: int, log=print) -> Path:
    """Write ``folder/unet`` and ``folder/vae`` once (an existing base is reused as is)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    if (folder / "vae" / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        return folder
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(mcfg.generator.unet)
    vae = AutoencoderKL.from_config(mcfg.generator.vae)
    note = README
    if vae_steps > 0:
        losses = fit_vae(vae, dataset, vae_steps, seed=seed)
        with torch.no_grad():
            x = torch.stack([dataset[p]["hq"] for p in range(min(len(dataset), 16))])
            std = float(vae.eval().encode(x).latent_dist.mode().std())
        vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
        note += (f"VAE fitted for {vae_steps} steps (L1 {losses[0]:.3f} -> {losses[-1]:.3f}), "
                 f"scaling factor {1.0 / max(std, 1e-6):.4f}\n")
        log("tiny base: " + note.splitlines()[-1])
    unet.save_pretrained(folder / "unet")
    vae.eval().save_pretrained(folder / "vae")
    (folder / "RANDOM_WEIGHTS_README.txt").write_text(note)
    return folder
