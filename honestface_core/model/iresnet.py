"""Frozen torch ArcFace backbone (IResNet), the network of insightface's recognition models.

One backbone serves the Face Identity Encoder (p_F), the Facial Feature Extractor (p_I) and the identity loss
(L_ID) -- our choice (docs/design.md §2). The network is the IResNet family of insightface's
``arcface_torch`` (``iresnet18/34/50/100``: antelopev2 ``glintr100.onnx`` is IResNet-100, buffalo_l
``w600k_r50.onnx`` is IResNet-50): 112x112 RGB input normalised as ``(x - 127.5) / 127.5``, 512-d output (not
normalised). The user's ONNX files are read into it by :mod:`.onnx_import`.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from honestface_core.geometry import ffhq_to_arcface, warp_antialiased

ARCFACE_SIZE = 112
ARCFACE_MEAN = 127.5
ARCFACE_STD = 127.5
BN_EPS = 1e-5

LAYOUTS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    "iresnet200": (6, 26, 60, 6),
}


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN, 3x3 conv, BN, PReLU, 3x3 conv (strided), BN, plus shortcut.

    Attribute names follow ``arcface_torch`` so its state dicts load unchanged.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes, eps=BN_EPS)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """ArcFace IResNet: stem, four stages of :class:`IBasicBlock` (each starting with stride 2), BN-FC-BN head.

    Args:
        layers: blocks per stage, e.g. ``(3, 4, 14, 3)`` for IResNet-50 (see :data:`LAYOUTS`).
        widths: channels per stage (``(64, 128, 256, 512)`` in every released model).
        num_features: embedding size (512).
        input_size: square input side (112).

    ``input_scale``/``input_shift`` (per channel) adapt the standard normalised input to graphs that carry their
    own normalisation (MXNet-converted models start with Sub/Mul); identity for PyTorch exports.
    """

    def __init__(
        self,
        layers: Sequence[int] = LAYOUTS["iresnet50"],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_features: int = 512,
        input_size: int = ARCFACE_SIZE,
    ):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4 or min(layers) < 1:
            raise ValueError(f"IResNet needs 4 stages with >= 1 block, got layers={layers}, widths={widths}")
        self.layers, self.widths = tuple(int(n) for n in layers), tuple(int(w) for w in widths)
        self.num_features, self.input_size = int(num_features), int(input_size)
        self.register_buffer("input_scale", torch.ones(1, 3, 1, 1))
        self.register_buffer("input_shift", torch.zeros(1, 3, 1, 1))
        self.has_input_affine = False  # set by the ONNX loader for graphs with their own normalisation
        stem = self.widths[0]
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=BN_EPS)
        self.prelu = nn.PReLU(stem)
        inplanes = stem
        for i, (blocks, planes) in enumerate(zip(self.layers, self.widths)):
            stage = [IBasicBlock(inplanes, planes, 2)] + [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        side = self.input_size // 16
        self.fc = nn.Linear(inplanes * side * side, self.num_features)
        self.features = nn.BatchNorm1d(self.num_features, eps=BN_EPS)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_stages(self, x: torch.Tensor, upto: int = 4) -> torch.Tensor:
        """Spatial features after stage ``upto`` (1..4) of a normalised ``(B, 3, 112, 112)`` RGB input."""
        if self.has_input_affine:
            x = x * self.input_scale + self.input_shift
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in self.stages[:upto]:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) ``(B, num_features)`` embedding, as insightface's ONNX models output it."""
        x = self.bn2(self.forward_stages(x, 4))
        return self.features(self.fc(torch.flatten(x, 1)))


def iresnet(name: str, **kwargs) -> IResNet:
    """Build an IResNet by layout name (``iresnet18/34/50/100/200``)."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown IResNet layout {name!r}; known: {sorted(LAYOUTS)}")
    return IResNet(LAYOUTS[name], **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Differentiable backbone on FFHQ-512 crops


class FaceBackbone(nn.Module):
    """Frozen IResNet used on FFHQ-aligned crops in [-1, 1], differentiable w.r.t. its input.

    The ``(B, 3, S, S)`` FFHQ crop is warped to insightface's 112x112 ArcFace template with ``grid_sample``
    (the similarity between the two 5-point templates, from :mod:`honestface_core.face.alignment`), so no CPU round
    trip happens and gradients reach the input (L_ID).

    Args:
        net: the IResNet (e.g. from :func:`.onnx_import.load_iresnet_from_onnx`).
        feature_stage: stage (1..4) whose output :meth:`features` returns; default 4 (``widths[3]`` x 7 x 7, the
            map the head's FC reads, matching ``FeatureExtractorConfig``); 3 gives ``widths[2]`` x 14 x 14 (our choice).
    """

    def __init__(self, net: IResNet, feature_stage: int = 4):
        super().__init__()
        if not 1 <= feature_stage <= 4:
            raise ValueError(f"feature_stage must be 1..4, got {feature_stage}")
        self.net = net.eval().requires_grad_(False)
        self.feature_stage = feature_stage

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, **kwargs) -> "FaceBackbone":
        from honestface_core.model.onnx_import import load_iresnet_from_onnx

        return cls(load_iresnet_from_onnx(path), **kwargs)

    @property
    def feature_channels(self) -> int:
        return self.net.widths[self.feature_stage - 1]

    @property
    def feature_size(self) -> int:
        return self.net.input_size // 2**self.feature_stage

    @property
    def embed_dim(self) -> int:
        return self.net.num_features

    def train(self, mode: bool = True) -> "FaceBackbone":
        """Stays in eval mode (frozen BN statistics) whatever the parent module does."""
        return super().train(False)

    def to_arcface(self, x: torch.Tensor) -> torch.Tensor:
        """Warp ``(B, 3, S, S)`` FFHQ crops in [-1, 1] to normalised ``(B, 3, 112, 112)`` ArcFace input.

        ``(x + 1) / 2 * 255`` pixels normalised by ``(p - 127.5) / 127.5`` equal ``x`` itself, so only the
        (antialiased, differentiable) warp is needed: :func:`~honestface_core.geometry.warp_antialiased`.
        """
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
            raise ValueError(f"expected (B, 3, S, S) crops, got {tuple(x.shape)}")
        size = self.net.input_size
        # float32: antialiased resizing has no CPU bf16 kernel; the caller casts after
        return warp_antialiased(x.float(), ffhq_to_arcface(int(x.shape[-1]), size), size, padding_mode="border")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_arcface(x).to(self.net.conv1.weight.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` spatial features of stage ``feature_stage`` for FFHQ crops in [-1, 1]."""
        return self.net.forward_stages(self._run(x), self.feature_stage)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised ``(B, 512)`` ArcFace embedding of FFHQ crops in [-1, 1] (float32)."""
        return F.normalize(self.net(self._run(x)).float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)
