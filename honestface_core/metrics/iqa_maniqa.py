"""MANIQA (Yang et al., "MANIQA: Multi-dimension Attention Network for No-Reference Image Quality Assessment",
CVPR Workshops 2022), no-reference image quality.

Our implementation of the model as IQA-PyTorch (pyiqa) runs it, so pyiqa's checkpoints load with ``strict=True``
and the scores are pyiqa's ``maniqa`` (KonIQ-10k, default) / ``maniqa-kadid`` / ``maniqa-pipal`` numbers:

* input RGB in [0, 1] mapped to [-1, 1] (mean = std = 0.5);
* an image whose shorter side is <= 224 is first enlarged (bilinear, ``align_corners=False``, no antialiasing,
  scale factor ``225 / shorter side``: pyiqa's ``F.interpolate`` call) so that 224x224 crops fit;
* 20 crops of 224x224 on pyiqa's ``uniform_crop`` grid (``ceil(sqrt(20)) = 5`` offsets per axis with step
  ``(side - 224) // 4``, the first 20 of the 25 in raster order); pyiqa up to 0.1.11 took 20 random crops instead
  (NumPy's legacy generator seeded with 123 before every call): ``crops="random"`` reproduces that;
* per crop: timm's ViT-B/8 (``vit_base_patch8_224``, LayerNorm eps 1e-6, exact GELU); the patch tokens of blocks
  6, 7, 8 and 9 (0-based) concatenated to 28x28x3072; two transposed-attention blocks, 1x1 conv to 768, a residual
  Swin stage (2 layers x 2 blocks, window 4, shift 2, 4 heads, 3x3 conv + ReLU after each layer,
  ``x = scale * layer(x) + x`` with scale 0.8 for KonIQ/KADID, 0.13 for PIPAL), the same again at 384 channels;
* per 8x8 patch a score (ReLU) and a weight (sigmoid); the image score is the weighted mean over the patches of
  all its crops together, ``sum(w * s) / (sum(w) + 1e-8)`` (pyiqa; the official MANIQA scripts average per-crop
  scores instead). About 0..1, higher is better.

ViT blocks 10 and 11, the final norm, the ImageNet head and the Swin stages' ``downsample`` convs are in the
checkpoint but unused by MANIQA: we load them (so the file loads strictly) and never run them.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from honestface_core.errors import HonestFaceError
from honestface_core.files.images import as_rgb_batch
from honestface_core.files.weight_files import load_weights, read_state_dict
from honestface_core.metrics.iqa_files import find_iqa_file

#: pyiqa's file name and Swin residual scale per training set (``koniq`` = pyiqa's default ``maniqa``)
FILES = {"koniq": "ckpt_koniq10k.pt", "kadid": "ckpt_kadid10k.pt", "pipal": "MANIQA_PIPAL-ae6d356b.pth"}
SCALES = {"koniq": 0.8, "kadid": 0.8, "pipal": 0.13}
CROP = 224
PATCH = 8
GRID = CROP // PATCH  # 28 tokens per side
DIM = 768
VIT_DEPTH, VIT_HEADS = 12, 12
#: ViT blocks whose patch tokens MANIQA uses (0-based); the blocks after the last one are never run
FEATURE_BLOCKS = (6, 7, 8, 9)
WINDOW, SWIN_HEADS, SWIN_MLP = 4, 4, 768
CROP_MODES = ("uniform", "random")
#: crops per network pass (our choice: bounds memory; results do not depend on it)
_CROPS_PER_PASS = 4


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _VitAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, VIT_HEADS, c // VIT_HEADS).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class _VitBlock(nn.Module):
    """timm's pre-norm ViT block (LayerNorm eps 1e-6)."""

    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM, eps=1e-6), nn.LayerNorm(DIM, eps=1e-6)
        self.attn, self.mlp = _VitAttention(), _Mlp(DIM, 4 * DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, DIM, PATCH, PATCH)


class _ViT(nn.Module):
    """timm's ``vit_base_patch8_224`` with its state-dict keys; :meth:`features` runs blocks 0..9 only."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, GRID * GRID + 1, DIM))
        self.patch_embed = _PatchEmbed()
        self.blocks = nn.ModuleList(_VitBlock() for _ in range(VIT_DEPTH))
        self.norm = nn.LayerNorm(DIM, eps=1e-6)  # unused by MANIQA
        self.head = nn.Linear(DIM, 1000)  # unused by MANIQA

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 224, 224)`` -> ``(N, 784, 3072)``: patch tokens of :data:`FEATURE_BLOCKS`, concatenated."""
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        outs = []
        for i, block in enumerate(self.blocks[:FEATURE_BLOCKS[-1] + 1]):
            x = block(x)
            if i in FEATURE_BLOCKS:
                outs.append(x[:, 1:])
        return torch.cat(outs, dim=2)


class _TABlock(nn.Module):
    """Transposed attention over channels: tokens ``(N, C, 784)``, attention ``(C, C)``, scale ``784 ** -0.5``."""

    def __init__(self):
        super().__init__()
        self.c_q, self.c_k, self.c_v = (nn.Linear(GRID * GRID, GRID * GRID) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n = x.shape
        attn = (self.c_q(x) @ self.c_k(x).transpose(1, 2) * n ** -0.5).softmax(-1)
        # (attn @ v) is (b, c, n); MANIQA transposes it to (b, n, c) and reads that memory back as (b, c, n)
        return (attn @ self.c_v(x)).transpose(1, 2).reshape(b, c, n) + x


def _windows(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` -> ``(B * nW, WINDOW * WINDOW, C)``, windows in raster order."""
    b, h, w, c = x.shape
    x = x.view(b, h // WINDOW, WINDOW, w // WINDOW, WINDOW, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, WINDOW * WINDOW, c)


def _unwindows(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`_windows`."""
    c = x.shape[-1]
    x = x.view(-1, h // WINDOW, w // WINDOW, WINDOW, WINDOW, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _relative_position_index() -> torch.Tensor:
    """``(16, 16)`` index into the ``(2 * WINDOW - 1) ** 2`` relative-position bias table (Swin's formula)."""
    ys, xs = torch.meshgrid(torch.arange(WINDOW), torch.arange(WINDOW), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])
    rel = coords[:, :, None] - coords[:, None, :] + (WINDOW - 1)
    return rel[0] * (2 * WINDOW - 1) + rel[1]


def _shift_mask(shift: int) -> torch.Tensor:
    """``(nW, 16, 16)`` additive mask (0 / -100) of the shifted windows on the 28x28 grid (Swin's formula)."""
    region = torch.zeros(1, GRID, GRID, 1)
    bounds = (slice(0, -WINDOW), slice(-WINDOW, -shift), slice(-shift, None))
    for i, (hs, ws) in enumerate((hs, ws) for hs in bounds for ws in bounds):
        region[:, hs, ws] = i
    ids = _windows(region)[..., 0]
    return (ids[:, None, :] != ids[:, :, None]).float() * -100.0


class _WindowAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * WINDOW - 1) ** 2, SWIN_HEADS))
        self.register_buffer("relative_position_index", _relative_position_index())
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, SWIN_HEADS, c // SWIN_HEADS).permute(2, 0, 3, 1, 4)
        attn = (q * (c // SWIN_HEADS) ** -0.5) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, SWIN_HEADS, n, n) + mask[None, :, None]).view(bw, SWIN_HEADS, n, n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c))


class _SwinBlock(nn.Module):
    """Swin block on the 28x28 token grid; odd blocks shift the windows by 2 (mask buffer ``attn_mask``)."""

    def __init__(self, dim: int, shift: int):
        super().__init__()
        self.shift = shift
        if shift:
            self.register_buffer("attn_mask", _shift_mask(shift))
        else:
            self.attn_mask = None
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn, self.mlp = _WindowAttention(dim), _Mlp(dim, SWIN_MLP)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        y = self.norm1(x).view(b, GRID, GRID, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), (1, 2))
        y = _unwindows(self.attn(_windows(y), self.attn_mask), GRID, GRID)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        x = x + y.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class _SwinLayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.blocks = nn.ModuleList(_SwinBlock(dim, 0 if i % 2 == 0 else WINDOW // 2) for i in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        b, n, c = x.shape
        x = F.relu(self.conv(x.transpose(1, 2).reshape(b, c, GRID, GRID)))
        return x.flatten(2).transpose(1, 2)


class _SwinStage(nn.Module):
    """MANIQA's residual Swin stage: ``x = scale * layer(x) + x`` for 2 layers, on ``(N, C, 28, 28)``."""

    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.scale = scale
        self.downsample = nn.Conv2d(dim, dim, 3, 2, 1)  # in the checkpoint, unused by MANIQA
        self.layers = nn.ModuleList(_SwinLayer(dim) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x.transpose(1, 2).reshape(b, c, GRID, GRID)


def _head(last: nn.Module) -> nn.Sequential:
    # indices 0 and 3 hold weights, as in pyiqa's Sequential(Linear, ReLU, Dropout, Linear, act); no dropout here
    return nn.Sequential(nn.Linear(DIM // 2, DIM // 2), nn.ReLU(), nn.Identity(), nn.Linear(DIM // 2, 1), last)


def crop_offsets(height: int, width: int, num: int, mode: str = "uniform", seed: int = 123) -> list[tuple[int, int]]:
    """``(top, left)`` of ``num`` 224x224 crops of a ``height x width`` image (both sides >= 224).

    ``uniform``: pyiqa's ``uniform_crop`` grid. ``random``: pyiqa <= 0.1.11's ``random_crop`` after
    ``np.random.seed(seed)`` (NumPy's legacy generator; the same offsets for every image of the batch).
    """
    if mode == "random":
        rng = np.random.RandomState(seed)
        return [(int(rng.randint(0, height - CROP + 1)), int(rng.randint(0, width - CROP + 1))) for _ in range(num)]
    root = math.isqrt(num)
    per_axis = root if root * root == num else root + 1
    step_h, step_w = (height - CROP) // root, (width - CROP) // root
    return [(i * step_h, j * step_w) for i in range(per_axis) for j in range(per_axis)][:num]


def _check_options(dataset: str, crops: str, num_crops: int, seed: int) -> None:
    if dataset not in FILES:
        raise HonestFaceError("MANIQA dataset", f"{dataset!r} is not known", f"Use one of {', '.join(FILES)}")
    if crops not in CROP_MODES:
        raise HonestFaceError("MANIQA crops", f"{crops!r} is not known", f"Use one of {', '.join(CROP_MODES)}")
    if not isinstance(num_crops, int) or num_crops < 1:
        raise HonestFaceError("MANIQA num_crops", f"{num_crops!r} is not a positive integer",
                              "Use pyiqa's 20 for comparable numbers")
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise HonestFaceError("MANIQA seed", f"{seed!r} is not an integer in 0..2**32-1", "Use pyiqa's 123")


class MANIQAMetric(nn.Module):
    """MANIQA score per image (about 0..1, higher is better), from one of pyiqa's three MANIQA checkpoints."""

    name = "M-IQA"

    def __init__(self, dataset: str = "koniq", crops: str = "uniform", num_crops: int = 20, seed: int = 123):
        super().__init__()
        _check_options(dataset, crops, num_crops, seed)
        self.dataset, self.crops, self.num_crops, self.seed = dataset, crops, num_crops, seed
        self.vit = _ViT()
        self.tablock1 = nn.ModuleList(_TABlock() for _ in range(2))
        self.conv1 = nn.Conv2d(4 * DIM, DIM, 1)
        self.swintransformer1 = _SwinStage(DIM, SCALES[dataset])
        self.tablock2 = nn.ModuleList(_TABlock() for _ in range(2))
        self.conv2 = nn.Conv2d(DIM, DIM // 2, 1)
        self.swintransformer2 = _SwinStage(DIM // 2, SCALES[dataset])
        self.fc_score = _head(nn.ReLU())
        self.fc_weight = _head(nn.Sigmoid())

    @classmethod
    def load(cls, models_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             path: str | os.PathLike | None = None, dataset: str = "koniq", crops: str = "uniform",
             num_crops: int = 20, seed: int = 123) -> "MANIQAMetric":
        """MANIQA trained on ``dataset`` (``koniq`` = pyiqa's default ``maniqa``, ``kadid``, ``pipal``) from ``path``
        or pyiqa's file name in ``<models_dir>/iqa`` or pyiqa's cache. ``dataset`` also sets the Swin residual
        scale, so give the right one with ``path``. ``crops``/``num_crops``/``seed``: see :func:`crop_offsets`.

        Raises:
            MetricUnavailable: the weight file is missing.
            HonestFaceError: unknown option, or a file that is not a MANIQA checkpoint.
        """
        _check_options(dataset, crops, num_crops, seed)
        file = find_iqa_file(cls.name, [FILES[dataset]], models_dir, path)
        what = f"a MANIQA {dataset} checkpoint ({FILES[dataset]})"
        model = cls(dataset, crops, num_crops, seed)
        # pyiqa reads the weights under "params" (never "params_ema"); a plain state dict is read as it is
        load_weights(model, read_state_dict(file, what, nesting=("params",)), file, what)
        return model.to(device).eval()

    def _patch_scores(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 3, 224, 224)`` normalised crops -> per-patch scores and weights, each ``(N, 784)``."""
        x = self.vit.features(crops).transpose(1, 2)  # (N, 3072, 784)
        for tab in self.tablock1:
            x = tab(x)
        x = self.swintransformer1(self.conv1(x.unflatten(2, (GRID, GRID))))
        x = x.flatten(2)
        for tab in self.tablock2:
            x = tab(x)
        x = self.swintransformer2(self.conv2(x.unflatten(2, (GRID, GRID)))).flatten(2).transpose(1, 2)
        return self.fc_score(x)[..., 0], self.fc_weight(x)[..., 0]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` IMAGE in [0, 1], any size -> ``(B,)`` float64 scores on CPU."""
        x = (as_rgb_batch(images, "images").to(self.conv1.weight.device).permute(0, 3, 1, 2) - 0.5) / 0.5
        if min(x.shape[-2:]) <= CROP:  # pyiqa: shorter side to 225 (224 for some sides: floor of a float product)
            x = F.interpolate(x, scale_factor=(CROP + 1) / min(x.shape[-2:]), mode="bilinear")
        offsets = crop_offsets(x.shape[-2], x.shape[-1], self.num_crops, self.crops, self.seed)
        tiles = torch.stack([x[..., t:t + CROP, l:l + CROP] for t, l in offsets], dim=1).flatten(0, 1)
        scores, weights = zip(*(self._patch_scores(c) for c in tiles.split(_CROPS_PER_PASS)))
        s, w = torch.cat(scores).view(len(x), -1), torch.cat(weights).view(len(x), -1)
        return ((w * s).sum(-1) / (w.sum(-1) + 1e-8)).double().cpu()


__all__ = ["CROP_MODES", "FILES", "MANIQAMetric", "SCALES", "crop_offsets"]
