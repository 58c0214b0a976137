"""Stage 1: the VRE dictionaries (OSDFace-style; DAEFR-like dual codebooks), a compact implementation.

1. ``hq``: a VQ autoencoder on HQ faces (the model's :class:`VisualRepresentationEmbedder` plus a mirrored decoder, a
   codebook), loss = L1 + Sobel-edge + codebook + 0.25 * commitment.
2. ``lq``: the same on degraded faces (its own encoder and codebook; reconstructs x_L).
3. ``associate``: the LQ encoder is tuned on (x_L, x_H) pairs so its patch features match the frozen HQ
   encoder's at the same positions: symmetric InfoNCE over all patches of the batch (positives = same sample,
   same position) + MSE to the HQ features, while its codebook loss keeps the LQ codes close (our choice).

The result ``vre.safetensors`` holds the LQ encoder, quant conv and codebook with the key names of
:class:`honestface_core.model.vre.VisualRepresentationEmbedder` (``encoder.*``, ``quant_conv.*``,
``codebook.weight``) and the VRE config in its metadata; stage 2 loads it with ``model.vre_checkpoint``.

Usage: ``python training/stage1.py --config training/configs/NAME.yaml --output DIR``
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import dataclasses
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from honestface_core.model.config import VREConfig
from honestface_core.model.vre import AttnBlock, ResnetBlock, VisualRepresentationEmbedder, _norm
from training.config import TrainConfig, load_config
from training.losses import EdgeLoss
from training.modeling import model_config_for


class VQDecoder(nn.Module):
    """VQGAN decoder mirroring :class:`VQEncoder` (nearest-neighbour 2x upsampling + 3x3 conv per level)."""

    def __init__(self, cfg: VREConfig):
        super().__init__()
        g, ch, mult = cfg.norm_groups, cfg.base_channels, tuple(cfg.channel_mult)
        block_in = ch * mult[-1]
        res = cfg.resolution // 2 ** (len(mult) - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.Sequential(ResnetBlock(block_in, block_in, g), AttnBlock(block_in, g, cfg.head_size),
                                 ResnetBlock(block_in, block_in, g))
        layers: list[nn.Module] = []
        for level in reversed(range(len(mult))):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(block_in, ch * mult[level], g))
                block_in = ch * mult[level]
                if res in cfg.attn_resolutions:
                    layers.append(AttnBlock(block_in, g, cfg.head_size))
            if level != 0:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(block_in, block_in, 3, padding=1)]
                res *= 2
        self.up = nn.Sequential(*layers)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class VQAutoencoder(VisualRepresentationEmbedder):
    """The model's VRE (encoder -> quant conv -> codebook) plus nearest-code quantisation (straight-through),
    a post-quant conv and a decoder, so its VRE part is saved under the model's own key names."""

    def __init__(self, cfg: VREConfig):
        super().__init__(cfg)
        nn.init.uniform_(self.codebook.weight, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)
        self.decoder = VQDecoder(cfg)

    def quantize(self, z: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (straight-through quantised z, VQ loss, code indices)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        book = self.codebook.weight
        idx = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)).argmin(1)
        zq = book[idx].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        loss = F.mse_loss(zq, z.detach()) + beta * F.mse_loss(z, zq.detach())
        return z + (zq - z).detach(), loss, idx.view(z.shape[0], -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zq, vq_loss, _ = self.quantize(self.encode(x))
        return self.decoder(self.post_quant_conv(zq)), vq_loss, zq

    def vre_state(self) -> dict[str, torch.Tensor]:
        """Encoder, quant conv and codebook under the :class:`VisualRepresentationEmbedder` key names."""
        sd = self.state_dict()
        return {k: v for k, v in sd.items() if k.split(".")[0] in ("encoder", "quant_conv", "codebook")}


def patch_infonce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE between patch features (B, C, H, W): the positive of a patch is the same patch."""
    fa = F.normalize(a.flatten(2).transpose(1, 2).reshape(-1, a.shape[1]), dim=1)
    fb = F.normalize(b.flatten(2).transpose(1, 2).reshape(-1, b.shape[1]), dim=1)
    logits = fa @ fb.t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def vre_config_for(cfg: TrainConfig) -> VREConfig:
    """The VRE config of the model named by ``cfg.model`` (variant + overrides)."""
    return model_config_for(cfg).vre


def train_stage1(cfg: TrainConfig, output: str | Path, log=print) -> Path:
    """Run the three phases; writes ``output/vre.safetensors`` (+ both autoencoders) and returns its path."""
    from training.data import FaceRestorationDataset, PositionSampler

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    s1 = cfg.stage1
    torch.manual_seed(cfg.seed)
    vcfg = vre_config_for(cfg)
    data_cfg = dataclasses.replace(cfg.data, refs_max=0, refs_min=0)
    dataset = FaceRestorationDataset(data_cfg, cfg.degradation, cfg.seed, cfg.data.cache_dir or output / "cache", log=log)
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=s1.batch_size, sampler=PositionSampler(s1.batch_size),
                                              num_workers=cfg.data.num_workers))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    edge = EdgeLoss()
    hq_ae, lq_ae = VQAutoencoder(vcfg).to(device), VQAutoencoder(vcfg).to(device)
    size = vcfg.resolution

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        b = next(loader)
        hq, lq = b["hq"].to(device), b["lq"].to(device)
        if hq.shape[-1] != size:
            hq, lq = (F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False) for t in (hq, lq))
        return hq, lq

    history: dict[str, list[float]] = {"hq": [], "lq": [], "associate": []}
    for phase, steps in (("hq", s1.hq_steps), ("lq", s1.lq_steps), ("associate", s1.associate_steps)):
        if phase == "associate":
            hq_ae.requires_grad_(False).eval()
            params = list(lq_ae.encoder.parameters()) + list(lq_ae.quant_conv.parameters()) + list(lq_ae.codebook.parameters())
        else:
            params = list((hq_ae if phase == "hq" else lq_ae).parameters())
        opt = torch.optim.Adam(params, lr=s1.lr, betas=(0.5, 0.9))
        t0 = time.time()
        for step in range(steps):
            hq, lq = batch()
            if phase == "associate":
                with torch.no_grad():
                    z_h = hq_ae.encode(hq)
                z_l = lq_ae.encode(lq)
                _, vq_loss, _ = lq_ae.quantize(z_l)
                loss = patch_infonce(z_l, z_h, s1.temperature) + F.mse_loss(z_l, z_h) + vq_loss
            else:
                ae, x = (hq_ae, hq) if phase == "hq" else (lq_ae, lq)
                rec, vq_loss, _ = ae(x)
                loss = F.l1_loss(rec, x) + edge(rec, x) + vq_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history[phase].append(float(loss.detach()))
            if step % max(1, steps // 10) == 0 or step == steps - 1:
                log(f"stage1 {phase} step {step + 1}/{steps} loss {float(loss.detach()):.4f} ({time.time() - t0:.1f}s)")
    meta = {"format": "honestface-vre", "vre_config": json.dumps(dataclasses.asdict(vcfg))}
    save_file({k: v.contiguous().cpu() for k, v in hq_ae.state_dict().items()}, str(output / "hq_vqgan.safetensors"), meta)
    save_file({k: v.contiguous().cpu() for k, v in lq_ae.state_dict().items()}, str(output / "lq_vqgan.safetensors"), meta)
    path = output / "vre.safetensors"
    save_file({k: v.contiguous().cpu() for k, v in lq_ae.vre_state().items()}, str(path), meta)
    (output / "stage1_history.json").write_text(json.dumps(history))
    log(f"stage1: wrote {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="training YAML (its data, degradation, model and stage1 sections)")
    p.add_argument("--output", required=True, help="output folder for vre.safetensors")
    args = p.parse_args(argv)
    train_stage1(load_config(args.config), args.output)


if __name__ == "__main__":
    main()
