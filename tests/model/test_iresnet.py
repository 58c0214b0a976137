"""Torch IResNet loaded from insightface-layout ArcFace ONNX files matches onnxruntime and insightface."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.model.iresnet import FaceBackbone, IResNet
from honestface_core.model.onnx_import import load_iresnet_from_onnx
from honestface_core.testing.arcface_onnx import write_arcface_onnx


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def arcface_onnx(tmp_path_factory):
    return write_arcface_onnx(tmp_path_factory.mktemp("arcface") / "w600k_r50.onnx", layers=(1, 2, 1, 1), width=8, seed=3)


@pytest.fixture(scope="module")
def face_crop(astronaut) -> np.ndarray:
    """A 512x512 RGB face-region crop of the astronaut photo (uint8)."""
    return cv2.resize(np.ascontiguousarray(astronaut[20:260, 140:380]), (512, 512), interpolation=cv2.INTER_AREA)


def _to_input(rgb_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(rgb_uint8)).permute(2, 0, 1)[None].float()
    return (x - 127.5) / 127.5


def test_writer_layout_matches_insightface_files(arcface_onnx):
    model = onnx.load(str(arcface_onnx))
    ops = {n.op_type for n in model.graph.node}
    assert ops == {"Conv", "PRelu", "BatchNormalization", "Add", "Flatten", "Gemm"}
    inp, out = model.graph.input[0], model.graph.output[0]
    assert inp.name == "input.1"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["None", 3, 112, 112]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["None", 512]
    assert [n.op_type for n in model.graph.node][-3:] == ["Flatten", "Gemm", "BatchNormalization"]


def test_loaded_backbone_matches_onnxruntime(arcface_onnx):
    net = load_iresnet_from_onnx(arcface_onnx)
    assert isinstance(net, IResNet) and net.layers == (1, 2, 1, 1) and net.widths == (8, 16, 32, 64)
    x = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ref = ort.InferenceSession(str(arcface_onnx), providers=["CPUExecutionProvider"]).run(None, {"input.1": x.numpy()})[0]
    with torch.no_grad():
        got = net(x).numpy()
    assert got.shape == (3, 512)
    assert _cos(got, ref).min() > 0.9999
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_matches_insightface_arcface_get_feat(arcface_onnx, face_crop):
    import insightface

    rec = insightface.model_zoo.get_model(str(arcface_onnx), providers=["CPUExecutionProvider"])
    assert type(rec).__name__ == "ArcFaceONNX" and rec.input_mean == 127.5
    crop112 = cv2.resize(face_crop, (112, 112), interpolation=cv2.INTER_AREA)
    ref = rec.get_feat(cv2.cvtColor(crop112, cv2.COLOR_RGB2BGR))  # insightface takes BGR, swaps to RGB
    with torch.no_grad():
        got = load_iresnet_from_onnx(arcface_onnx)(_to_input(crop112)).numpy()
    assert _cos(got, ref)[0] > 0.9999
    with torch.no_grad():  # feeding BGR instead would be a different embedding: the channel order matters
        bgr = load_iresnet_from_onnx(arcface_onnx)(_to_input(crop112[:, :, ::-1])).numpy()
    assert _cos(bgr, ref)[0] < 0.9999


def test_mxnet_style_graph_with_own_normalisation(arcface_onnx, tmp_path, face_crop):
    """Graphs that normalise inside (Sub, Mul first; insightface then feeds raw pixels) load equivalently."""
    import insightface

    model = onnx.load(str(arcface_onnx))
    g = model.graph
    raw, first = "data_raw", g.input[0].name
    g.initializer.extend([numpy_helper.from_array(np.array([127.5, 120.0, 110.0], np.float32).reshape(1, 3, 1, 1), "sub_c"),
                          numpy_helper.from_array(np.array(1 / 128.0, np.float32), "mul_c")])
    pre = [helper.make_node("Sub", [raw, "sub_c"], ["sub_o"], name="Sub_0"),
           helper.make_node("Mul", ["sub_o", "mul_c"], [first], name="Mul_1")]
    for i, node in enumerate(pre):
        g.node.insert(i, node)
    g.input[0].name = raw
    path = tmp_path / "mx.onnx"
    onnx.save(model, str(path))
    rec = insightface.model_zoo.get_model(str(path), providers=["CPUExecutionProvider"])
    assert rec.input_mean == 0.0 and rec.input_std == 1.0
    crop112 = cv2.resize(face_crop, (112, 112), interpolation=cv2.INTER_AREA)
    ref = rec.get_feat(cv2.cvtColor(crop112, cv2.COLOR_RGB2BGR))
    net = load_iresnet_from_onnx(path)
    with torch.no_grad():
        got = net(_to_input(crop112)).numpy()
    assert _cos(got, ref)[0] > 0.9999


def test_face_backbone_on_ffhq_crop_matches_insightface_alignment(arcface_onnx, face_crop):
    """FaceBackbone's differentiable warp of an FFHQ crop ~ insightface's own norm_crop + get_feat."""
    import insightface
    from insightface.utils import face_align

    from honestface_core.geometry import FFHQ_TEMPLATE_512

    rec = insightface.model_zoo.get_model(str(arcface_onnx), providers=["CPUExecutionProvider"])
    bgr = cv2.cvtColor(face_crop, cv2.COLOR_RGB2BGR)
    ref = rec.get_feat(face_align.norm_crop(bgr, FFHQ_TEMPLATE_512.astype(np.float32), 112))
    backbone = FaceBackbone.from_onnx(arcface_onnx)
    x = torch.from_numpy(face_crop).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        emb = backbone.embed(x)
    assert emb.shape == (1, 512)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1))
    assert _cos(emb.numpy(), ref)[0] > 0.99


def test_face_backbone_frozen_but_differentiable(arcface_onnx):
    backbone = FaceBackbone.from_onnx(arcface_onnx, feature_stage=3)
    wrapper = torch.nn.Sequential(backbone).train()  # a parent switching to train mode must not unfreeze BN
    assert not backbone.net.training
    assert all(not p.requires_grad for p in backbone.parameters())
    x = (torch.rand(2, 3, 128, 128) * 2 - 1).requires_grad_(True)
    feats = backbone.features(x)
    assert feats.shape == (2, backbone.feature_channels, backbone.feature_size, backbone.feature_size) == (2, 32, 14, 14)
    loss = 1 - (wrapper(x)[0] * backbone.embed(x.detach().flip(-1))[0]).sum() + feats.square().mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_bad_files(tmp_path):
    with pytest.raises(MissingModelError, match="glintr100.onnx"):
        load_iresnet_from_onnx(tmp_path / "glintr100.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(HonestFaceError, match="bad.onnx"):
        load_iresnet_from_onnx(bad)
