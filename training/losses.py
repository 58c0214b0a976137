"""Stage-2 losses: L_Per (MSE + perceptual), L_ID, L_MFA and the adversarial terms.

All images are (B, 3, H, W) in [-1, 1]. Weights live in :class:`training.config.LossConfig`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from honestface_core.errors import MissingModelError
from honestface_core.metrics.vgg16 import VGG16_TAP_CHANNELS, load_vgg16_features, vgg16_features, vgg16_taps
from honestface_core.weight_files import load_weights, read_state_dict

log = logging.getLogger(__name__)

class LPIPS(nn.Module):
    """LPIPS (VGG, v0.1) built from two local files, never downloaded.

    Args:
        vgg_path: torchvision ``vgg16`` state dict (``vgg16-397923af.pth``; only ``features.*`` keys are used).
        lin_path: LPIPS linear layers (``lpips/weights/v0.1/vgg.pth``, keys ``lin{i}.model.1.weight``).
    """

    def __init__(self, vgg_path: str | Path, lin_path: str | Path):
        super().__init__()
        self.features = vgg16_features(lambda channels: nn.MaxPool2d(2, 2))
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in VGG16_TAP_CHANNELS)
        load_vgg16_features(self.features, vgg_path)
        what = "LPIPS's VGG linear layers (lpips/weights/v0.1/vgg.pth)"
        names = {f"lin{i}.model.1.weight": f"{i}.weight" for i in range(len(self.lins))}  # LPIPS's key -> ours
        load_weights(self.lins, {names.get(k, k): v for k, v in read_state_dict(lin_path, what).items()}, lin_path, what)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                for h in vgg16_taps(self.features, (x - self.shift) / self.scale)]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS distance of two [-1, 1] batches (scalar)."""
        return sum(lin((a - b).pow(2)).mean() for lin, a, b in zip(self.lins, self._taps(x), self._taps(y)))


def sobel_edges(x: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=x.device, dtype=x.dtype)
    c = x.shape[1]
    kx = k.view(1, 1, 3, 3).repeat(c, 1, 1, 1)
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(xp, kx, groups=c), F.conv2d(xp, kx.transpose(2, 3), groups=c)
    return (gx.pow(2) + gy.pow(2) + 1e-6).sqrt()


class EdgeLoss(nn.Module):
    """Fallback perceptual term when no LPIPS weights are present (our choice): L1 between Sobel gradient
    magnitudes at full and half resolution. It rewards sharp, correctly placed edges but is not LPIPS."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = (sobel_edges(x) - sobel_edges(y)).abs().mean()
        return loss + (sobel_edges(F.avg_pool2d(x, 2)) - sobel_edges(F.avg_pool2d(y, 2))).abs().mean()


def build_perceptual(kind: str, vgg_path: str = "", lin_path: str = "") -> nn.Module:
    """``lpips`` (files required), ``edge``, or ``auto`` (LPIPS when both files exist, else the edge fallback)."""
    have = bool(vgg_path and lin_path and Path(vgg_path).is_file() and Path(lin_path).is_file())
    if kind == "lpips" or (kind == "auto" and have):
        for path, name in ((vgg_path, "vgg16-397923af.pth"), (lin_path, "vgg.pth")):
            if not path or not Path(path).is_file():
                raise MissingModelError(Path(path).name if path else name, Path(path).parent if path else "losses.lpips_*",
                                        "torchvision VGG16 weights and the LPIPS v0.1 'vgg.pth' from the lpips package")
        return LPIPS(vgg_path, lin_path)
    if kind in ("auto", "edge"):
        if kind == "auto":
            log.warning("LPIPS weights not configured/found: perceptual term falls back to the Sobel edge loss")
        return EdgeLoss()
    raise ValueError(f"losses.perceptual_kind must be lpips, edge or auto, not {kind!r}")


def identity_loss(emb_fake: torch.Tensor, emb_real: torch.Tensor) -> torch.Tensor:
    """L_ID = 1 - cos(ArcFace(x_hat_H), ArcFace(x_H)), averaged over the batch."""
    return (1 - F.cosine_similarity(emb_fake, emb_real.detach(), dim=1)).mean()


def masked_feature_loss(feats_fake: list[torch.Tensor], feats_real: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """L_MFA: mean squared distance of channel-normalised deep features inside the facial-region mask.

    ``mask`` (B, 1, H, W) in [0, 1] is area-resized to every feature map; each level is the mask-weighted mean
    (our choice: unit-normalised features as in LPIPS, so levels of different scales weigh alike).
    """
    total = mask.new_zeros(())
    for a, b in zip(feats_fake, feats_real):
        m = F.interpolate(mask.to(a.dtype), size=a.shape[-2:], mode="area")
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-6)
        b = b.detach() / (b.detach().pow(2).sum(1, keepdim=True).sqrt() + 1e-6)
        d = (a - b).pow(2).sum(1, keepdim=True)
        total = total + (d * m).sum() / m.sum().clamp_min(1e-6)
    return total / max(len(feats_fake), 1)


def generator_gan_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """L_G: hinge (-D(fake)) or non-saturating (softplus(-D(fake)))."""
    return -fake_logits.mean() if kind == "hinge" else F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Hinge or non-saturating (logistic) discriminator loss."""
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def backbone_pyramid(backbone: nn.Module, x: torch.Tensor, upto: int = 3) -> list[torch.Tensor]:
    """Outputs of stages 1..``upto`` of a :class:`~honestface_core.model.iresnet.FaceBackbone` for FFHQ crops
    in [-1, 1] (one pass; the features live in the ArcFace-112 frame, e.g. 56/28/14 px)."""
    net = backbone.net
    h = backbone.to_arcface(x).to(next(net.parameters()).dtype)
    h = net.prelu(net.bn1(net.conv1(h * net.input_scale + net.input_shift)))
    out = []
    for stage in net.stages[:upto]:
        h = stage(h)
        out.append(h)
    return out


def mfa_loss(backbone: nn.Module, fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor, upto: int = 3) -> torch.Tensor:
    """L_MFA between restored and target FFHQ crops, with the facial mask (B, 1, S, S) of the target warped to
    the backbone's ArcFace frame (our choice of features: the frozen IResNet's stages 1..``upto``)."""
    mask_arc = backbone.to_arcface(mask.expand(-1, 3, -1, -1).to(fake.dtype))[:, :1].clamp(0, 1)
    with torch.no_grad():
        feats_real = backbone_pyramid(backbone, real, upto)
    return masked_feature_loss(backbone_pyramid(backbone, fake, upto), feats_real, mask_arc)
