"""Random-weight insightface model packs under the real file names (tests, wiring graphs without real weights).

The ONNX files have the exact input/output signatures insightface's model router recognises, so the real loading
code (:func:`honestface_core.files.insightface_models.load_face_analysis`) runs where the real (non-commercial,
hub-hosted) weights cannot be present. What they detect or embed is meaningless.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from honestface_core.errors import HonestFaceError
from honestface_core.files.insightface_models import INSIGHTFACE_PACKS, pack_folder
from honestface_core.testing.arcface_onnx import write_arcface_onnx

_OPSET = 17
_IR_VERSION = 8  # readable by older onnxruntime builds too


def _conv(graph: list, inits: list, rng: np.random.Generator, x: str, out: str, cin: int, cout: int, k: int,
          bias: float = 0.0, scale: float = 1.0) -> str:
    """Append a k x k / stride k convolution with random weights."""
    from onnx import helper, numpy_helper

    w = (rng.standard_normal((cout, cin, k, k)) * scale / np.sqrt(cin * k * k)).astype(np.float32)
    b = np.full((cout,), bias, np.float32)
    inits += [numpy_helper.from_array(w, out + "_w"), numpy_helper.from_array(b, out + "_b")]
    graph.append(helper.make_node("Conv", [x, out + "_w", out + "_b"], [out], kernel_shape=[k, k], strides=[k, k], name=out))
    return out


def _save(path: Path, nodes: list, inits: list, inputs: list, outputs: list) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)], producer_name="honestface-random-weights")
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _write_head_model(path: Path, size: int, out_dim: int, input_name: str, patch: int, seed: int) -> Path:
    """(N,3,size,size) -> (N,out_dim): patchify conv + linear, random weights (landmark and gender/age
    signatures)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    c = 4
    feat = _conv(nodes, inits, rng, input_name, "patch", 3, c, patch)
    nodes.append(helper.make_node("Relu", [feat], ["act"]))
    nodes.append(helper.make_node("Flatten", ["act"], ["flat"], axis=1))
    n_in = c * (size // patch) ** 2
    inits += [numpy_helper.from_array((rng.standard_normal((n_in, out_dim)) / np.sqrt(n_in)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(out_dim, np.float32), "fc_b")]
    nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"]))
    return _save(path, nodes, inits,
                 [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", 3, size, size])],
                 [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", out_dim])])


def _write_scrfd(path: Path, seed: int) -> Path:
    """SCRFD signature: input (1,3,H,W) dynamic; 9 outputs = scores, boxes, 5-point keypoints for strides
    8/16/32 with 2 anchors per position, flattened as (H/s*W/s*2, 1|4|10) like scrfd_10g_bnkps / det_10g."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    outs: dict[str, list] = {"score": [], "bbox": [], "kps": []}
    for stride in (8, 16, 32):
        feat = _conv(nodes, inits, rng, "input.1", f"feat{stride}", 3, 8, stride)
        nodes.append(helper.make_node("Relu", [feat], [f"relu{stride}"]))
        # Random weights still make "faces": only the coarsest level fires, on a minority of positions,
        # so downstream wiring sees a few boxes without thousands of candidates (our choice).
        for kind, ch, bias in (("score", 2, -1.3 if stride == 32 else -12.0), ("bbox", 8, 1.0), ("kps", 20, 0.0)):
            y = _conv(nodes, inits, rng, f"relu{stride}", f"{kind}{stride}_conv", 8, ch, 1, bias=bias, scale=2.0)
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [y], [f"{y}_sig"]))
                y = f"{y}_sig"
            elif kind == "bbox":
                nodes.append(helper.make_node("Softplus", [y], [f"{y}_pos"]))  # positive distances
                y = f"{y}_pos"
            nodes.append(helper.make_node("Transpose", [y], [f"{y}_t"], perm=[0, 2, 3, 1]))
            shape_name = f"{kind}{stride}_shape"
            inits.append(numpy_helper.from_array(np.array([-1, ch // 2], np.int64), shape_name))
            out = f"{kind}_{stride}"
            nodes.append(helper.make_node("Reshape", [f"{y}_t", shape_name], [out]))
            outs[kind].append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [f"n{stride}", ch // 2]))
    return _save(path, nodes, inits,
                 [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
                 outs["score"] + outs["bbox"] + outs["kps"])


def _write_recognizer(path: Path, seed: int) -> Path:
    """ArcFace: a small random IResNet exported exactly like insightface's ArcFace files, (N,3,112,112) ->
    (N,512), so the torch backbone loader (:mod:`honestface_core.model.onnx_import`) reads it too."""
    return write_arcface_onnx(path, seed=seed)


_WRITERS = {
    "detector": _write_scrfd,
    "recognizer": _write_recognizer,
    "2d106det.onnx": lambda p, s: _write_head_model(p, 192, 212, "data", 32, s),
    "1k3d68.onnx": lambda p, s: _write_head_model(p, 192, 3309, "data", 32, s),
    "genderage.onnx": lambda p, s: _write_head_model(p, 96, 3, "data", 16, s),
}


def write_insightface_test_models(models_dir: str | os.PathLike,
                                  packs: Sequence[str] = ("antelopev2", "buffalo_l")) -> list[Path]:
    """Write random-weight ONNX packs under ``models_dir/insightface/models/<pack>/`` with the real file names.

    The files load through insightface's own ``FaceAnalysis`` and run; what they detect or embed is
    meaningless (random weights, for wiring and tests only). Existing files are never overwritten.
    """
    jobs = []
    for pack in packs:
        if pack not in INSIGHTFACE_PACKS:
            raise HonestFaceError("packs", f"unknown insightface pack '{pack}'", f"Use one of {sorted(INSIGHTFACE_PACKS)}")
        for index, filename in enumerate(INSIGHTFACE_PACKS[pack]):
            path = pack_folder(models_dir, pack) / filename
            if path.exists():
                raise HonestFaceError(f"'{path}'", "already exists (it is never overwritten)",
                                      "Write test models into a new, empty folder")
            jobs.append((_WRITERS["detector" if index == 0 else "recognizer" if index == 1 else filename], path, index))
    return [write(path, index) for write, path, index in jobs]
