"""Frozen torch ArcFace backbone (IResNet) loaded from the user's insightface ONNX files.

One backbone serves the Face Identity Encoder (p_F), the Facial Feature Extractor (p_I) and the identity loss
(L_ID) -- our choice (SPEC §1). The network is the IResNet family of insightface's ``arcface_torch``
(``iresnet18/34/50/100``: antelopev2 ``glintr100.onnx`` is IResNet-100, buffalo_l ``w600k_r50.onnx`` is
IResNet-50): 112x112 RGB input normalised as ``(x - 127.5) / 127.5``, 512-d output (not normalised).

ONNX exports of these networks fold each Conv+BatchNorm pair into one Conv with a bias and use numeric
initializer names, so :func:`load_iresnet_from_onnx` maps weights by graph topology (stem, residual blocks found
at each branching point, head), never by names, and infers the depth and widths from the graph.
:func:`write_arcface_onnx` writes a small random-weight network in the same ONNX layout for tests.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HonestFaceError, MissingModelError

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
# ONNX import (topology-based)


@dataclass
class _Graph:
    """Minimal view of an ONNX graph: constants, producers and consumers by tensor name."""

    nodes: list
    consts: dict[str, np.ndarray]
    consumers: dict[str, list] = field(default_factory=dict)
    input_name: str = ""
    output_name: str = ""

    @classmethod
    def from_model(cls, model) -> "_Graph":
        from onnx import numpy_helper

        consts = {t.name: numpy_helper.to_array(t).astype(np.float32, copy=False) for t in model.graph.initializer}
        nodes = []
        for node in model.graph.node:
            if node.op_type == "Constant":
                value = next((a for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    consts[node.output[0]] = numpy_helper.to_array(value.t).astype(np.float32, copy=False)
                continue
            # shape-only ops on constants (e.g. PReLU slopes unsqueezed to (C, 1, 1)) stay constants
            if node.op_type in ("Identity", "Unsqueeze", "Reshape", "Cast", "Squeeze") and node.input[0] in consts:
                consts[node.output[0]] = consts[node.input[0]]
                continue
            nodes.append(node)
        graph = cls(nodes, consts)
        for node in nodes:
            for name in node.input:
                graph.consumers.setdefault(name, []).append(node)
        inputs = [i.name for i in model.graph.input if i.name not in consts]
        if len(inputs) != 1 or len(model.graph.output) != 1:
            raise ValueError(f"expected one image input and one output, got inputs {inputs}")
        graph.input_name, graph.output_name = inputs[0], model.graph.output[0].name
        return graph

    def data_input(self, node) -> str:
        """The one non-constant input of a node."""
        names = [n for n in node.input if n and n not in self.consts]
        if len(names) != 1:
            raise ValueError(f"{node.op_type} node {node.name!r} has {len(names)} data inputs")
        return names[0]

    def const_inputs(self, node) -> list[np.ndarray]:
        return [self.consts[n] for n in node.input if n in self.consts]

    def chain(self, tensor: str, stop_ops: tuple[str, ...] = ("Add",)) -> tuple[list, str]:
        """Follow single consumers from ``tensor`` until a node of ``stop_ops`` or a branch; returns (nodes, tensor)."""
        nodes = []
        while True:
            users = self.consumers.get(tensor, [])
            if len(users) != 1 or users[0].op_type in stop_ops:
                return nodes, tensor
            nodes.append(users[0])
            tensor = users[0].output[0]


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            return helper.get_attribute_value(a)
    return default


def _bn_params(graph: _Graph, node) -> dict[str, np.ndarray]:
    scale, bias, mean, var = graph.const_inputs(node)
    return {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var, "eps": _attr(node, "epsilon", 1e-5)}


def _set_bn(bn: nn.BatchNorm2d | nn.BatchNorm1d, p: dict) -> None:
    """Copy BN statistics; a different epsilon is folded into the running variance."""
    var = p["running_var"] + (p["eps"] - bn.eps)
    for key in ("weight", "bias", "running_mean"):
        getattr(bn, key).data.copy_(_t(p[key]).reshape(-1))
    bn.running_var.data.copy_(_t(var).reshape(-1))


def _affine_bn(bias: np.ndarray, eps: float = BN_EPS) -> dict:
    """BN parameters that compute ``x + bias`` (used where the export fused a BN into the preceding conv)."""
    c = bias.shape[0]
    one = np.ones(c, np.float32)
    return {"weight": one * math.sqrt(1.0 + eps), "bias": bias, "running_mean": 0 * one, "running_var": one, "eps": eps}


def _conv_bn(graph: _Graph, nodes: list, i: int) -> tuple[np.ndarray, int, dict, int]:
    """Parse ``Conv [BatchNormalization]`` at ``nodes[i]`` -> (weight, stride, bn params, next index)."""
    conv = nodes[i]
    if conv.op_type != "Conv":
        raise ValueError(f"expected Conv, found {conv.op_type}")
    consts = graph.const_inputs(conv)
    weight = consts[0]
    bias = consts[1] if len(consts) > 1 else np.zeros(weight.shape[0], np.float32)
    stride = int((_attr(conv, "strides", [1, 1]) or [1])[0])
    if i + 1 < len(nodes) and nodes[i + 1].op_type == "BatchNormalization":
        bn = _bn_params(graph, nodes[i + 1])
        bn["running_mean"] = bn["running_mean"] - bias
        return weight, stride, bn, i + 2
    return weight, stride, _affine_bn(bias), i + 1


def _input_affine(graph: _Graph, pre: list) -> tuple[np.ndarray, np.ndarray]:
    """Fold in-graph normalisation (Sub/Mul/Add/Div by constants, MXNet style) into scale/shift on raw pixels."""
    scale, shift = np.ones(3, np.float32), np.zeros(3, np.float32)
    for node in pre:
        c = np.broadcast_to(graph.const_inputs(node)[0].reshape(-1), (3,)).astype(np.float32)
        if node.op_type == "Sub":
            shift = shift - c
        elif node.op_type == "Add":
            shift = shift + c
        elif node.op_type == "Mul":
            scale, shift = scale * c, shift * c
        elif node.op_type == "Div":
            scale, shift = scale / c, shift / c
        else:
            raise ValueError(f"unexpected {node.op_type} before the first convolution")
    return scale, shift


def _parse(graph: _Graph) -> dict:
    """Walk the graph: stem, residual blocks (at each branching tensor), head. Returns plain arrays."""
    pre, tensor = graph.chain(graph.input_name, stop_ops=("Conv",))
    scale, shift = _input_affine(graph, pre)
    stem_nodes, tensor = graph.chain(tensor)
    w, _, bn, j = _conv_bn(graph, stem_nodes, 0)
    if [n.op_type for n in stem_nodes[j:]] != ["PRelu"]:
        raise ValueError(f"unexpected stem ops {[n.op_type for n in stem_nodes]}")
    out = {"input_affine": (scale, shift, bool(pre)), "stem": (w, bn, graph.const_inputs(stem_nodes[j])[0]), "blocks": []}
    while len(graph.consumers.get(tensor, [])) == 2:  # a residual block starts at every branching tensor
        branches = []
        for user in graph.consumers[tensor]:
            if user.op_type == "Add":
                branches.append(([], user))
                continue
            nodes, end = graph.chain(user.output[0])
            add = graph.consumers[end][0]
            branches.append(([user, *nodes], add))
        adds = {id(b[1]) for b in branches}
        if len(adds) != 1 or branches[0][1].op_type != "Add":
            raise ValueError("residual branches do not meet in one Add")
        main, short = sorted((b[0] for b in branches), key=len, reverse=True)
        ops = [n.op_type for n in main]
        if ops[0] != "BatchNormalization" or "PRelu" not in ops:
            raise ValueError(f"unexpected residual block ops {ops}")
        bn1 = _bn_params(graph, main[0])
        w1, _, bn2, k = _conv_bn(graph, main, 1)
        prelu = graph.const_inputs(main[k])[0]
        w2, stride, bn3, k = _conv_bn(graph, main, k + 1)
        if k != len(main):
            raise ValueError(f"unexpected residual block ops {ops}")
        down = None
        if short:
            wd, sd, bnd, k = _conv_bn(graph, short, 0)
            if k != len(short):
                raise ValueError(f"unexpected shortcut ops {[n.op_type for n in short]}")
            down = (wd, sd, bnd)
        out["blocks"].append({"bn1": bn1, "w1": w1, "bn2": bn2, "prelu": prelu, "w2": w2, "stride": stride, "bn3": bn3, "down": down})
        tensor = branches[0][1].output[0]
    head, end = graph.chain(tensor, stop_ops=())
    if end != graph.output_name:
        raise ValueError("the graph does not end in a single chain after the last residual block")
    ops = [n.op_type for n in head if n.op_type not in ("Dropout", "Flatten", "Reshape")]
    if not ops or ops[0] != "BatchNormalization":
        raise ValueError(f"unexpected head ops {[n.op_type for n in head]}")
    out["bn2"] = _bn_params(graph, next(n for n in head if n.op_type == "BatchNormalization"))
    fc_w = fc_b = None
    features = None
    for node in head[1:]:
        if node.op_type == "Gemm":
            consts = graph.const_inputs(node)
            fc_w = consts[0] if _attr(node, "transB", 0) else consts[0].T
            fc_w = fc_w * _attr(node, "alpha", 1.0)
            fc_b = consts[1] * _attr(node, "beta", 1.0) if len(consts) > 1 else None
        elif node.op_type == "MatMul":
            fc_w = graph.const_inputs(node)[0].T
        elif node.op_type == "Add" and fc_w is not None and features is None:
            fc_b = graph.const_inputs(node)[0]
        elif node.op_type == "BatchNormalization" and fc_w is not None:
            features = _bn_params(graph, node)
        elif node.op_type not in ("Dropout", "Flatten", "Reshape"):
            raise ValueError(f"unexpected head op {node.op_type}")
    if fc_w is None:
        raise ValueError("no fully connected layer found after the last residual block")
    fc_b = np.zeros(fc_w.shape[0], np.float32) if fc_b is None else fc_b.reshape(-1)
    out["fc"] = (fc_w, fc_b)
    out["features"] = features if features is not None else _affine_bn(np.zeros(fc_w.shape[0], np.float32))
    return out


def _stage_layout(blocks: list[dict]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Blocks per stage and stage widths: a stage starts at every strided (downsampling) block."""
    layers, widths = [], []
    for b in blocks:
        if b["stride"] != 1 or not layers:
            layers.append(0)
            widths.append(int(b["w2"].shape[0]))
        layers[-1] += 1
    return tuple(layers), tuple(widths)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32))


def load_iresnet_from_onnx(path: str | os.PathLike) -> IResNet:
    """Read an insightface ArcFace ONNX file (``glintr100.onnx``, ``w600k_r50.onnx``...) into an :class:`IResNet`.

    The depth, stage widths, embedding size and input size are inferred from the graph. The returned module is
    in eval mode and frozen; it takes RGB ``(x - 127.5) / 127.5`` input, exactly what insightface's
    ``ArcFaceONNX.get_feat`` feeds the ONNX session (``swapRB=True`` on BGR crops), and returns the same raw
    embedding.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise MissingModelError(path.name, path.parent, "an insightface model pack (antelopev2 or buffalo_l)")
    try:
        model = onnx.load(str(path))
        graph = _Graph.from_model(model)
        parsed = _parse(graph)
        dims = model.graph.input[[i.name for i in model.graph.input].index(graph.input_name)].type.tensor_type.shape.dim
        input_size = int(dims[2].dim_value) or ARCFACE_SIZE
    except HonestFaceError:
        raise
    except Exception as exc:  # malformed or foreign graph: one clear message, not an onnx traceback
        raise HonestFaceError(
            f"ArcFace model '{path}'", f"is not an insightface IResNet recognition model ({exc})",
            "Use glintr100.onnx (antelopev2) or w600k_r50.onnx (buffalo_l) from an insightface model pack",
        ) from exc
    layers, widths = _stage_layout(parsed["blocks"])
    if len(layers) != 4:
        raise HonestFaceError(f"ArcFace model '{path}'", f"has {len(layers)} stages, an IResNet has 4",
                              "Use an insightface IResNet recognition model (glintr100.onnx or w600k_r50.onnx)")
    fc_w, fc_b = parsed["fc"]
    net = IResNet(layers, widths, num_features=fc_w.shape[0], input_size=input_size)
    scale, shift, pre_normalised = parsed["input_affine"]
    # our input is (raw - 127.5) / 127.5; the graph's own normalisation (if any) expects raw pixels
    net.input_scale.copy_(_t(scale * ARCFACE_STD).view(1, 3, 1, 1))
    net.input_shift.copy_(_t(scale * ARCFACE_MEAN + shift).view(1, 3, 1, 1))
    net.has_input_affine = bool(pre_normalised)
    w, bn, slope = parsed["stem"]
    net.conv1.weight.data.copy_(_t(w))
    _set_bn(net.bn1, bn)
    net.prelu.weight.data.copy_(_t(slope).reshape(-1))
    for block, p in zip((b for s in net.stages for b in s), parsed["blocks"]):
        _set_bn(block.bn1, p["bn1"])
        block.conv1.weight.data.copy_(_t(p["w1"]))
        _set_bn(block.bn2, p["bn2"])
        block.prelu.weight.data.copy_(_t(p["prelu"]).reshape(-1))
        block.conv2.weight.data.copy_(_t(p["w2"]))
        _set_bn(block.bn3, p["bn3"])
        if (p["down"] is None) != (block.downsample is None):
            raise HonestFaceError(f"ArcFace model '{path}'", "has an unexpected shortcut layout",
                                  "Use an insightface IResNet recognition model")
        if p["down"] is not None:
            block.downsample[0].weight.data.copy_(_t(p["down"][0]))
            _set_bn(block.downsample[1], p["down"][2])
    _set_bn(net.bn2, parsed["bn2"])
    net.fc.weight.data.copy_(_t(fc_w))
    net.fc.bias.data.copy_(_t(fc_b))
    _set_bn(net.features, parsed["features"])
    return net.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------
# ONNX export (random-weight test models)


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


# ----------------------------------------------------------------------------------------------------------
# Differentiable backbone on FFHQ-512 crops


class FaceBackbone(nn.Module):
    """Frozen IResNet used on FFHQ-aligned crops in [-1, 1], differentiable w.r.t. its input.

    The ``(B, 3, S, S)`` FFHQ crop is warped to insightface's 112x112 ArcFace template with ``grid_sample``
    (the similarity between the two 5-point templates, from :mod:`honestface_core.alignment`), so no CPU round
    trip happens and gradients reach the input (L_ID).

    Args:
        net: the IResNet (e.g. from :func:`load_iresnet_from_onnx`).
        feature_stage: stage (1..4) whose output :meth:`features` returns; default 4 (``widths[3]`` x 7 x 7, the
            map the head's FC reads, matching ``FeatureExtractorConfig``); 3 gives ``widths[2]`` x 14 x 14 (our choice).
    """

    def __init__(self, net: IResNet, feature_stage: int = 4):
        super().__init__()
        if not 1 <= feature_stage <= 4:
            raise ValueError(f"feature_stage must be 1..4, got {feature_stage}")
        self.net = net.eval().requires_grad_(False)
        self.feature_stage = feature_stage
        self._matrices: dict[int, torch.Tensor] = {}

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, **kwargs) -> "FaceBackbone":
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

    def _matrix(self, size: int) -> torch.Tensor:
        """2x3 matrix mapping FFHQ crop pixels (side ``size``) to ArcFace-112 pixels."""
        if size not in self._matrices:
            from ..alignment import ARCFACE_TEMPLATE_112, estimate_similarity, template_for_size

            dst = ARCFACE_TEMPLATE_112 * (self.net.input_size / 112.0)
            self._matrices[size] = torch.from_numpy(estimate_similarity(template_for_size(size), dst)).float()
        return self._matrices[size]

    def to_arcface(self, x: torch.Tensor) -> torch.Tensor:
        """Warp ``(B, 3, S, S)`` FFHQ crops in [-1, 1] to normalised ``(B, 3, 112, 112)`` ArcFace input.

        ``(x + 1) / 2 * 255`` pixels normalised by ``(p - 127.5) / 127.5`` equal ``x`` itself, so only the warp
        is needed. The crop is first shrunk with antialiasing to twice the target scale so that the bilinear warp
        does not alias (our choice; both steps are differentiable).
        """
        from ..alignment import warp_affine

        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
            raise ValueError(f"expected (B, 3, S, S) crops, got {tuple(x.shape)}")
        x = x.float()  # the warp runs in float32 (antialiased resize has no CPU bf16 kernel); cast after
        size, side = self.net.input_size, int(x.shape[-1])
        scale = float(torch.linalg.det(self._matrix(side)[:, :2]).abs().sqrt())
        if scale < 0.5:
            side = max(size, round(side * 2 * scale))
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        m = self._matrix(side).to(x.device)
        return warp_affine(x, m.expand(x.shape[0], 2, 3), size, padding_mode="border")

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
