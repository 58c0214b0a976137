"""MUSIQ (Ke et al., "MUSIQ: Multi-scale Image Quality Transformer", ICCV 2021), no-reference image quality.

Our implementation of the model as IQA-PyTorch (pyiqa) runs it, so pyiqa's converted checkpoints load with
``strict=True`` and the scores are pyiqa's ``musiq`` / ``musiq-ava`` / ``musiq-spaq`` / ``musiq-paq2piq`` numbers:

* input RGB in [0, 1] mapped to [-1, 1];
* three scales: the image resized to longer side L = 224 and 384 with the aspect ratio kept (sides
  ``round(side * (L / longer_side))``) by ``F.interpolate`` bicubic, ``align_corners=False``, no antialiasing, as
  pyiqa's code does (its docstring names TF's Gaussian resize of the original release), plus the original
  resolution with all of its patches;
* each scale zero-padded TF-"SAME" style (after the [-1, 1] mapping) to whole 32x32 patches, raster order;
* hash-based spatial positions on a 10x10 grid (PyTorch's nearest-neighbour index rule, as pyiqa) and a scale
  embedding (0: 224, 1: 384, 2: original);
* stem per patch (weight-standardised 7x7/2 conv, GroupNorm, ReLU, 3x3/2 max pool, one bottleneck), linear
  embedding of the 8x8x256 map in channels-last order, 14 pre-norm transformer blocks, head on the class token.
  KonIQ, SPAQ and PaQ-2-PiQ heads give the score (about 0..100); the AVA head gives a 10-bin distribution whose
  mean ``sum(p_i * i)`` (1..10) is the score.

pyiqa pads the two resized scales to fixed token counts and masks the padding out of attention (fill -1e3);
we leave the padding tokens out instead (our choice: the class token never attends to them in pyiqa either, so the
result is the same up to float rounding, and attention needs no mask).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from honestface_core.errors import HonestFaceError
from honestface_core.files.images import as_rgb_batch
from honestface_core.files.weight_files import load_weights, read_state_dict
from honestface_core.metrics.iqa_files import find_iqa_file

#: pyiqa's file name of each training set's checkpoint (``pretrained=`` in pyiqa; ``koniq10k`` is ``musiq``)
FILES = {
    "koniq10k": "musiq_koniq_ckpt-e95806b9.pth",
    "ava": "musiq_ava_ckpt-e8d3f067.pth",
    "spaq": "musiq_spaq_ckpt-358bb6af.pth",
    "paq2piq": "musiq_paq2piq_ckpt-364c0c84.pth",
}
PATCH = 32
GRID = 10
LONGER_SIDES = (224, 384)
HIDDEN, MLP_DIM, HEADS, LAYERS = 384, 1152, 6, 14
#: patches per stem call (our choice: bounds memory for large images; results do not depend on it)
_STEM_CHUNK = 2048


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "SAME" zero padding of the last two dims (the extra pixel goes bottom/right)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class _WSConv(nn.Conv2d):
    """Bias-free conv with weight standardisation (per output channel, unbiased std + 1e-5) and "SAME" padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(_same_pad(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


class _Bottleneck(nn.Module):
    """ResNet-v1 bottleneck 64 -> 256 with GroupNorm(32, eps 1e-4) and a projection shortcut."""

    def __init__(self, cin: int = 64, cout: int = 256):
        super().__init__()
        self.conv1, self.gn1 = _WSConv(cin, cin, 1), nn.GroupNorm(32, cin, eps=1e-4)
        self.conv2, self.gn2 = _WSConv(cin, cin, 3), nn.GroupNorm(32, cin, eps=1e-4)
        self.conv3, self.gn3 = _WSConv(cin, cout, 1), nn.GroupNorm(32, cout, eps=1e-4)
        self.conv_proj, self.gn_proj = _WSConv(cin, cout, 1), nn.GroupNorm(32, cout, eps=1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        return F.relu(self.gn3(self.conv3(y)) + self.gn_proj(self.conv_proj(x)))


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query, self.key, self.value, self.out = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (m(x).view(b, n, HEADS, c // HEADS).transpose(1, 2) for m in (self.query, self.key, self.value))
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(HIDDEN, MLP_DIM), nn.Linear(MLP_DIM, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6, exact GELU)."""

    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(HIDDEN, eps=1e-6)
        self.attention = _Attention()
        self.norm2 = nn.LayerNorm(HIDDEN, eps=1e-6)
        self.mlp = _Mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PosEmb(nn.Module):
    def __init__(self):
        super().__init__()
        self.position_emb = nn.Parameter(torch.zeros(1, GRID * GRID, HIDDEN))


class _ScaleEmb(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale_emb = nn.Parameter(torch.zeros(len(LONGER_SIDES) + 1, HIDDEN))


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.posembed_input, self.scaleembed_input = _PosEmb(), _ScaleEmb()
        self.cls = nn.Parameter(torch.zeros(1, 1, HIDDEN))
        self.encoder_norm = nn.LayerNorm(HIDDEN, eps=1e-6)
        self.transformer = nn.ModuleDict({f"encoderblock_{i}": _Block() for i in range(LAYERS)})

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """``(B, N, 384)`` patch embeddings -> ``(B, 384)`` normalised class token."""
        x = tokens + self.posembed_input.position_emb[0, positions] + self.scaleembed_input.scale_emb[scales]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.transformer.values():
            x = block(x)
        return self.encoder_norm(x[:, 0])


def _hashed_positions(rows: int, cols: int) -> torch.Tensor:
    """Index into the 10x10 position grid of each patch of a ``rows x cols`` patch grid, raster order.

    A grid cell per patch by PyTorch's nearest-neighbour rule ``floor(i * float32(10 / n))``, as pyiqa computes it
    with ``F.interpolate``; an exact integer ``i * 10 // n`` differs for some n > 200.
    """
    grid = torch.arange(GRID, dtype=torch.float32).view(1, 1, GRID)
    r = F.interpolate(grid, size=rows, mode="nearest").view(rows, 1).long()
    c = F.interpolate(grid, size=cols, mode="nearest").view(1, cols).long()
    return (r * GRID + c).flatten()


def _scale_patches(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, 3, H, W)`` -> patches ``(B, N, 3, 32, 32)`` and their hashed positions ``(N,)``."""
    x = _same_pad(x, PATCH, PATCH)
    b, c, h, w = x.shape
    rows, cols = h // PATCH, w // PATCH
    patches = x.view(b, c, rows, PATCH, cols, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c, PATCH, PATCH)
    return patches, _hashed_positions(rows, cols).to(x.device)


def multiscale_patches(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B, 3, H, W)`` in [-1, 1] -> patches ``(B, N, 3, 32, 32)``, positions ``(N,)``, scale ids ``(N,)`` of the
    224 and 384 longer-side resizes and the original resolution, in that order."""
    h, w = x.shape[-2:]
    scaled = []
    for side in LONGER_SIDES:
        ratio = side / max(h, w)  # pyiqa's float expression, so the rounding of the sides matches
        scaled.append(F.interpolate(x, size=(round(h * ratio), round(w * ratio)), mode="bicubic", align_corners=False))
    parts = [_scale_patches(s) for s in scaled + [x]]
    scale_ids = torch.cat([torch.full((len(p),), i, dtype=torch.long, device=x.device)
                           for i, (_, p) in enumerate(parts)])
    return torch.cat([p for p, _ in parts], dim=1), torch.cat([p for _, p in parts]), scale_ids


class MUSIQMetric(nn.Module):
    """MUSIQ score per image (higher is better), from one of pyiqa's four MUSIQ checkpoints."""

    name = "MUSIQ"

    def __init__(self, dataset: str = "koniq10k"):
        super().__init__()
        self.dataset = dataset
        self.conv_root = _WSConv(3, 64, 7, 2)
        self.gn_root = nn.GroupNorm(32, 64, eps=1e-6)
        self.block1 = _Bottleneck()
        self.embedding = nn.Linear(256 * (PATCH // 4) ** 2, HIDDEN)
        self.transformer_encoder = _Encoder()
        # pyiqa: Linear for a single score ("head.*"), Sequential(Linear, Softmax) for AVA ("head.0.*")
        self.head = nn.Sequential(nn.Linear(HIDDEN, 10)) if dataset == "ava" else nn.Linear(HIDDEN, 1)

    @classmethod
    def load(cls, models_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             path: str | os.PathLike | None = None, dataset: str = "koniq10k") -> "MUSIQMetric":
        """MUSIQ trained on ``dataset`` (``koniq10k`` = pyiqa's default ``musiq``, ``ava``, ``spaq``, ``paq2piq``)
        from ``path`` or pyiqa's file name in ``<models_dir>/iqa`` or pyiqa's cache.

        Raises:
            MetricUnavailable: the weight file is missing.
            HonestFaceError: unknown ``dataset``, or a file that is not that MUSIQ checkpoint.
        """
        if dataset not in FILES:
            raise HonestFaceError("MUSIQ dataset", f"{dataset!r} is not known", f"Use one of {', '.join(FILES)}")
        file = find_iqa_file(cls.name, [FILES[dataset]], models_dir, path)
        what = f"a MUSIQ {dataset} checkpoint ({FILES[dataset]})"
        model = cls(dataset)
        load_weights(model, read_state_dict(file, what), file, what)
        return model.to(device).eval()

    def _embed(self, patches: torch.Tensor) -> torch.Tensor:
        """``(P, 3, 32, 32)`` -> ``(P, 384)``."""
        x = F.relu(self.gn_root(self.conv_root(patches)))
        x = self.block1(F.max_pool2d(_same_pad(x, 3, 2), 3, 2))  # zero padding = TF's after the ReLU
        return self.embedding(x.permute(0, 2, 3, 1).flatten(1))  # channels-last flatten, as the TF original

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` IMAGE in [0, 1], any size -> ``(B,)`` float64 scores on CPU."""
        device = self.embedding.weight.device
        x = (as_rgb_batch(images, "images").to(device).permute(0, 3, 1, 2) - 0.5) * 2.0
        patches, positions, scales = multiscale_patches(x)
        b, n = patches.shape[:2]
        tokens = torch.cat([self._embed(p) for p in patches.flatten(0, 1).split(_STEM_CHUNK)]).view(b, n, HIDDEN)
        out = self.head(self.transformer_encoder(tokens, positions, scales))
        if self.dataset == "ava":
            out = (out.softmax(-1) * torch.arange(1, 11, device=device, dtype=out.dtype)).sum(-1, keepdim=True)
        return out[:, 0].double().cpu()


__all__ = ["FILES", "MUSIQMetric", "multiscale_patches"]
