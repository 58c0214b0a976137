"""Stage-2 losses: L_Per (MSE + perceptual), L_ID, L_MFA and the adversarial terms.

All images are (B, 3, H, W) in [-1, 1]. Weights live in :class:`training.config.LossConfig`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.metrics.image_quality import (DISTS_FILE, DISTSMetric, dists_weight_candidates, find_weight_file,
                                                   torch_checkpoints_dir)
from honestface_core.metrics.vgg16 import VGG16_FILE, VGG16_TAP_CHANNELS, load_vgg16_features, vgg16_features, vgg16_taps
from honestface_core.files.weight_files import load_weights, read_state_dict
from training.config import LossConfig

log = logging.getLogger(__name__)

#: values of ``losses.perceptual_kind`` (see :func:`build_perceptual`)
PERCEPTUAL_KINDS = ("edge_dists", "lpips", "edge", "auto")


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


def sobel_edges(x: torch.Tensor, padding: str = "replicate") -> torch.Tensor:
    """Per-channel Sobel gradient magnitude ``sqrt(gx^2 + gy^2 + 1e-6)``; ``padding``: ``replicate`` or ``zeros``."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=x.device, dtype=x.dtype)
    c = x.shape[1]
    kx = k.view(1, 1, 3, 3).repeat(c, 1, 1, 1)
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate") if padding == "replicate" else F.pad(x, (1, 1, 1, 1))
    gx, gy = F.conv2d(xp, kx, groups=c), F.conv2d(xp, kx.transpose(2, 3), groups=c)
    return (gx.pow(2) + gy.pow(2) + 1e-6).sqrt()


class EdgeLoss(nn.Module):
    """Fallback perceptual term when no LPIPS/DISTS weights are present (our choice): L1 between Sobel gradient
    magnitudes at full and half resolution. It rewards sharp, correctly placed edges but is not a learned metric."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = (sobel_edges(x) - sobel_edges(y)).abs().mean()
        return loss + (sobel_edges(F.avg_pool2d(x, 2)) - sobel_edges(F.avg_pool2d(y, 2))).abs().mean()


def grey_edge_map(x: torch.Tensor) -> torch.Tensor:
    """OSDFace's edge map of a (B, 3, H, W) [0, 1] batch: the channel mean (grey), then the Sobel magnitude with
    zero padding, unnormalised; (B, 1, H, W)."""
    return sobel_edges(x.mean(1, keepdim=True), padding="zeros")


class EdgeAwareDISTS(nn.Module):
    """OSDFace's perceptual loss: ``mean DISTS(x, y) + mean DISTS(edge(x), edge(y))`` with :func:`grey_edge_map`.

    Read from OSDFace's ``edge_aware_dists_demo.py`` (github.com/jkwang28/OSDFace, commit 292d98c): pyiqa's DISTS
    ``as_loss`` on [0, 1] images, plus the same DISTS on the Sobel magnitude of the channel-mean grey image
    (3x3 kernels, zero padding, ``sqrt(gx^2 + gy^2 + 1e-6)``, no normalisation), weights 1 and 1. pyiqa feeds the
    one-channel map to DISTS by broadcasting, which equals repeating it over three channels, as done here.
    (OSDFace's ``utils/others.py`` greys with torchvision's luma instead; we follow the loss's own demo.)
    Inputs are [-1, 1] like every training loss; DISTS is the evaluation's :class:`DISTSMetric` (frozen).
    """

    def __init__(self, dists: DISTSMetric):
        super().__init__()
        self.dists = dists.requires_grad_(False).eval()

    def terms(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image term, edge term), each the batch mean of DISTS."""
        a, b = (x + 1) / 2, (y + 1) / 2
        ea, eb = grey_edge_map(a), grey_edge_map(b)
        return self.dists.distance(a, b).mean(), self.dists.distance(ea.expand(-1, 3, -1, -1), eb.expand(-1, 3, -1, -1)).mean()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        image, edge = self.terms(x, y)
        return image + edge


def _locate(losses: LossConfig, key: str, found: Path | None, filename: str, folder: str | Path,
            what: str) -> tuple[Path | None, MissingModelError]:
    """The file set in ``losses.<key>``, else ``found`` (a lookup's result); plus the error to raise if missing."""
    if getattr(losses, key):
        path = Path(getattr(losses, key))
        return (path if path.is_file() else None), MissingModelError(path.name, path.parent, what)
    return found, MissingModelError(filename, folder, what)


def _first_file(candidates: list[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _lpips_lin_candidates() -> list[Path]:
    """LPIPS's ``weights/v0.1/vgg.pth`` inside an installed ``lpips`` package (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    return [Path(p) / "weights" / "v0.1" / "vgg.pth" for p in (spec.submodule_search_locations or [])] if spec else []


def build_perceptual(losses: LossConfig, models_dir: str | Path | None = None) -> nn.Module:
    """The L_per term named by ``losses.perceptual_kind``, from local files only (never downloaded).

    - ``edge_dists``: :class:`EdgeAwareDISTS`. torchvision's VGG16 file (``losses.vgg16``, else
      ``models_dir/torchvision/`` or torch's hub cache) and DISTS's ``weights.pt`` (``losses.dists_weights``, else
      ``models_dir/dists/`` or an installed ``DISTS_pytorch``): the evaluation's lookup.
    - ``lpips``: :class:`LPIPS` with the same VGG16 file and ``losses.lpips_lin`` (else the ``lpips`` package's).
    - ``edge``: :class:`EdgeLoss`.
    - ``auto`` (our choice): ``edge_dists`` if its files are found, else ``lpips``, else ``edge`` with a warning.

    Raises:
        MissingModelError: a file the chosen kind needs is missing.
        HonestFaceError: unknown kind, or a file that is not in its format.
    """
    kind = losses.perceptual_kind
    if kind not in PERCEPTUAL_KINDS:
        raise HonestFaceError("config 'losses.perceptual_kind'", f"unknown value {kind!r}",
                              f"Use one of {', '.join(PERCEPTUAL_KINDS)}")
    vgg = _locate(losses, "vgg16", find_weight_file(VGG16_FILE, models_dir), VGG16_FILE,
                  Path(models_dir) / "torchvision" if models_dir else torch_checkpoints_dir(),
                  "torchvision's ImageNet VGG16 weights")
    dists = dists_weight_candidates(models_dir)
    lin = _lpips_lin_candidates()
    files = {"edge_dists": (vgg, _locate(losses, "dists_weights", _first_file(dists), DISTS_FILE,
                                         dists[0].parent if dists else "(set losses.dists_weights)",
                                         "DISTS's alpha/beta file, shipped inside the DISTS_pytorch wheel")),
             "lpips": (vgg, _locate(losses, "lpips_lin", _first_file(lin), "vgg.pth",
                                    lin[0].parent if lin else "(set losses.lpips_lin)",
                                    "LPIPS v0.1 linear layers, weights/v0.1/vgg.pth inside the lpips wheel"))}
    if kind == "auto":
        kind = next((k for k, need in files.items() if all(path for path, _ in need)), "edge")
        if kind == "edge":
            log.warning("no DISTS or LPIPS weights found: the perceptual term falls back to the Sobel edge loss")
    if kind == "edge":
        return EdgeLoss()
    for path, missing in files[kind]:
        if path is None:
            raise missing
    (vgg_path, _), (second, _) = files[kind]
    if kind == "lpips":
        return LPIPS(vgg_path, second)
    return EdgeAwareDISTS(DISTSMetric.load(vgg_path=vgg_path, weights_path=second))


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
