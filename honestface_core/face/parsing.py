"""Face parsing masks (facexlib ParseNet / BiSeNet) and the feathered fallback mask.

Both networks predict 19 CelebAMask-HQ classes but in different orders; :class:`FaceParser` maps both to ONE
label set, the face-parsing.PyTorch (BiSeNet) order :data:`LABELS`.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from honestface_core.errors import HonestFaceError

LABELS = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
          "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")
"""Our label set: index -> CelebAMask-HQ class, in the order of face-parsing.PyTorch's BiSeNet."""

# ParseNet (PSFRGAN / GPEN "ParseNet-latest", facexlib parsing_parsenet.pth) uses CelebAMask-HQ's original order
_PARSENET_ORDER = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                   "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
PARSENET_TO_LABELS = tuple(LABELS.index(n) for n in _PARSENET_ORDER)

FACE_REGION_LABELS = tuple(LABELS.index(n) for n in ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip"))
"""Facial region (skin, brows, eyes, nose, mouth, lips; not hair, ears, neck or background): the L_MFA region."""

PASTE_REGION_LABELS = FACE_REGION_LABELS + (LABELS.index("eye_g"),)
"""Default paste-back region: the facial region plus eyeglasses, which sit on it (our choice)."""

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with reflect padding (kernel radius 3 sigma)."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def feathered_mask(size: int, n: int = 1, device: str | torch.device = "cpu", margin: float = 0.1,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Square mask ``(n, S, S)``: 1 inside, a smooth cosine ramp to exactly 0 over ``margin * S`` at the border.

    The fallback paste-back mask when no parser is loaded (our choice: margin 0.1 keeps the seam in the
    background/hair band of FFHQ-aligned crops).
    """
    ramp_len = max(1.0, margin * size)
    d = torch.arange(size, device=device, dtype=torch.float64)
    edge = torch.minimum(d + 0.5, size - 0.5 - d)  # distance of the pixel centre to the crop border
    r = ((edge - 0.5) / ramp_len).clamp(0, 1)  # 0 at the outermost pixel
    r = 0.5 - 0.5 * torch.cos(math.pi * r)
    m = (r[:, None] * r[None, :]).to(dtype)
    return m.expand(n, size, size).contiguous()


class FaceParser:
    """Per-pixel face parsing of aligned crops with facexlib's ParseNet or BiSeNet.

    Args:
        net: the loaded network (see :mod:`honestface_core.files.facexlib_models`).
        kind: ``"parsenet"`` or ``"bisenet"``.
        input_size: side the crops are resized to for the network (512, the size both were trained at).
        chunk: crops per forward pass.
    """

    def __init__(self, net: torch.nn.Module, kind: str = "parsenet", input_size: int = 512, chunk: int = 4):
        if kind not in ("parsenet", "bisenet"):
            raise HonestFaceError("face parser kind", f"'{kind}' is unknown", "Use 'parsenet' or 'bisenet'")
        self.net, self.kind, self.input_size, self.chunk = net.eval(), kind, int(input_size), int(chunk)
        remap = PARSENET_TO_LABELS if kind == "parsenet" else tuple(range(len(LABELS)))
        self._remap = torch.tensor(remap, dtype=torch.long)

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike, kind: str = "parsenet", device: str | torch.device = "cpu",
                        **kwargs) -> "FaceParser":
        from honestface_core.files.facexlib_models import load_bisenet, load_parsenet

        if kind not in ("parsenet", "bisenet"):
            raise HonestFaceError("face parser kind", f"'{kind}' is unknown", "Use 'parsenet' or 'bisenet'")
        net = load_parsenet(models_dir, device) if kind == "parsenet" else load_bisenet(models_dir, device)
        return cls(net, kind, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, s, s)`` RGB [0, 1] -> ``(n, 19, s, s)`` logits in the network's own label order."""
        s = x.shape[-1]
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                          antialias=s > self.input_size)
        if self.kind == "parsenet":
            x = x * 2 - 1
        else:
            mean = torch.tensor(_IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            std = torch.tensor(_IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x - mean) / std
        logits = self.net(x)[0]
        return F.interpolate(logits.float(), size=(s, s), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def parse(self, crops: torch.Tensor) -> torch.Tensor:
        """``(N, S, S, 3)`` float [0, 1] crops -> ``(N, S, S)`` long labels in :data:`LABELS` order."""
        if crops.dim() != 4 or crops.shape[-1] != 3:
            raise HonestFaceError("face crops", f"expected (N, S, S, 3), got {tuple(crops.shape)}", "Pass aligned face crops")
        dev = self.device
        dtype = next(self.net.parameters()).dtype
        out = []
        for part in crops.split(self.chunk):
            x = part.permute(0, 3, 1, 2).to(dev, dtype)
            out.append(self._logits(x).argmax(1).to(crops.device))
        labels = torch.cat(out) if out else crops.new_zeros(crops.shape[:3], dtype=torch.long)
        return self._remap.to(labels.device)[labels]

    def face_mask(self, crops: torch.Tensor, feather: float = 0.02, labels: tuple[int, ...] = PASTE_REGION_LABELS,
                  margin: float = 0.02) -> torch.Tensor:
        """Soft ``(N, S, S)`` mask in [0, 1] of the facial region, on the crops' device.

        ``feather`` is the Gaussian sigma as a fraction of S (0.02 ~ 10 px at 512, our choice); the result is
        multiplied by a thin :func:`feathered_mask` (``margin``) so it is exactly 0 at the crop border.
        """
        return region_mask(self.parse(crops), labels, feather, margin)


def region_mask(labels: torch.Tensor, region: tuple[int, ...] = FACE_REGION_LABELS, feather: float = 0.02,
                margin: float = 0.02) -> torch.Tensor:
    """Soft mask from ``(N, S, S)`` label maps: 1 on ``region`` labels, Gaussian-feathered, 0 at the border."""
    s = labels.shape[-1]
    hard = torch.isin(labels, torch.tensor(region, device=labels.device)).float()[:, None]
    soft = gaussian_blur(hard, feather * s)[:, 0] if feather > 0 else hard[:, 0]
    if margin > 0:
        soft = soft * feathered_mask(s, 1, labels.device, margin)
    return soft.clamp(0, 1)
