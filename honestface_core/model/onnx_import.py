"""Read insightface's ArcFace ONNX files into the torch :class:`~.iresnet.IResNet`.

ONNX exports of these networks fold each Conv+BatchNorm pair into one Conv with a bias and use numeric
initializer names, so :func:`load_iresnet_from_onnx` maps weights by graph topology (stem, residual blocks found
at each branching point, head), never by names, and infers the depth and widths from the graph.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.model.iresnet import ARCFACE_MEAN, ARCFACE_SIZE, ARCFACE_STD, BN_EPS, IResNet


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

