"""torchvision's VGG16 ``features`` stack up to relu5_3, shared by DISTS and the training LPIPS loss.

Layer indices and state-dict keys match torchvision's (``features.<i>.weight``), so its ImageNet file
``vgg16-397923af.pth`` loads as is; the caller picks the pooling (max pooling, or DISTS's L2 pooling).
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn

from honestface_core.files.weight_files import load_weights, read_state_dict

VGG16_FILE = "vgg16-397923af.pth"
#: convolution widths, "M" = pooling; torchvision's fifth pool (index 30) is left out
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
#: indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 and their widths
VGG16_TAPS = (3, 8, 15, 22, 29)
VGG16_TAP_CHANNELS = (64, 128, 256, 512, 512)


def vgg16_features(pool: Callable[[int], nn.Module]) -> nn.Sequential:
    """The 30 layers of torchvision's VGG16 ``features`` (conv 3x3 + ReLU), ``pool(channels)`` at the four pools."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _CFG:
        if v == "M":
            layers.append(pool(cin))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers)


def load_vgg16_features(features: nn.Sequential, path: str | os.PathLike) -> None:
    """Load the ``features.*`` tensors of torchvision's VGG16 file into ``features`` (the classifier is ignored).

    Raises:
        HonestFaceError: the file cannot be read safely or is not torchvision's VGG16 (names the file).
    """
    what = f"torchvision's VGG16 state dict ({VGG16_FILE})"
    state = read_state_dict(path, what)
    load_weights(features, {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}, path, what)


def vgg16_taps(features: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """The activations at :data:`VGG16_TAPS` of ``x`` (already normalised as the caller's metric wants)."""
    out = []
    for i, layer in enumerate(features):
        x = layer(x)
        if i in VGG16_TAPS:
            out.append(x)
    return out


__all__ = ["VGG16_FILE", "VGG16_TAPS", "VGG16_TAP_CHANNELS", "load_vgg16_features", "vgg16_features", "vgg16_taps"]
