"""pytorch-fid's Inception network (the TensorFlow FID graph's Inception-v3) in torchvision's layout, so that
pytorch-fid's weight file loads as is (:mod:`.fid` reads the file and computes FID; docs/evaluation.md, "FID").

It differs from torchvision's Inception-v3 only in its pooling: the average pools of the Mixed_5*, 6* and 7b blocks
average over the pixels inside the image (TensorFlow's ``SAME`` pooling) and Mixed_7c's pool branch is a max pool.
Kept apart from :mod:`.fid` so that importing torchvision is paid only when FID runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.inception import InceptionA, InceptionC, InceptionE, inception_v3


def _valid_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average over the pixels inside the image (TensorFlow's SAME average pool)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(InceptionA):
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), b5, b3, self.branch_pool(_valid_avg_pool(x))]


class _BlockC(InceptionC):
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = x
        for k in range(1, 6):
            d7 = getattr(self, f"branch7x7dbl_{k}")(d7)
        return [self.branch1x1(x), b7, d7, self.branch_pool(_valid_avg_pool(x))]


class _BlockE(InceptionE):
    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _valid_avg_pool(x)
        return [self.branch1x1(x), torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
                torch.cat([self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3)], 1), self.branch_pool(pooled)]


def fid_inception_v3() -> torch.nn.Module:
    """The FID Inception-v3 with uninitialised weights; its ``state_dict`` keys are those of pytorch-fid's file
    (torchvision's names, a 1008-class ``fc``, no auxiliary classifier)."""
    net = inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        setattr(net, name, _BlockA(cin, pool_features=pool))
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        setattr(net, name, _BlockC(768, channels_7x7=c7))
    net.Mixed_7b = _BlockE(1280, max_pool=False)
    net.Mixed_7c = _BlockE(2048, max_pool=True)
    return net
