"""A random-weight IResNet in insightface's ArcFace ONNX layout (read by :mod:`honestface_core.model.onnx_import`)."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from honestface_core.model.iresnet import ARCFACE_SIZE, IResNet


def write_arcface_onnx(
    path: str | os.PathLike,
    layers: Sequence[int] = (1, 1, 1, 1),
    width: int = 8,
    num_features: int = 512,
    seed: int = 0,
) -> Path:
    """Write a random-weight IResNet in insightface's ArcFace ONNX layout (for tests; outputs are meaningless).

    Exported like insightface's ``arcface_torch/torch2onnx.py``: eval mode (Conv+BN folded), opset 11, input
    ``input.1`` of shape ``(None, 3, 112, 112)``, one ``(None, num_features)`` output. Stage widths are
    ``width * (1, 2, 4, 8)`` (64 gives the real sizes). BN statistics are random so that folding is exercised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    net = IResNet(layers, tuple(width * m for m in (1, 2, 4, 8)), num_features=num_features)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.01)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                c = module.num_features
                module.weight.copy_(1.0 + 0.1 * torch.randn(c, generator=gen))
                module.bias.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_var.copy_(1.0 + 0.2 * torch.rand(c, generator=gen))
            elif isinstance(module, nn.PReLU):
                module.weight.copy_(0.25 + 0.05 * torch.randn(module.weight.shape, generator=gen))
    net.eval()
    dummy = torch.zeros(1, 3, ARCFACE_SIZE, ARCFACE_SIZE)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (dummy,), str(path), dynamo=False, opset_version=11, input_names=["input.1"],
            dynamic_axes={"input.1": {0: "None"}}, do_constant_folding=True, keep_initializers_as_inputs=False,
        )
    import onnx

    model = onnx.load(str(path))
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "None"
    onnx.save(model, str(path))
    return path
