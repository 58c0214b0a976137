"""MANIQA (M-IQA): pyiqa's checkpoint format, loading, crops, scores and errors, with one random-weight file in the
real format (a torch.save'd state dict of all 316 keys, ~540 MB) written once for the module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.metrics.image_quality import MetricUnavailable
from honestface_core.metrics.iqa_maniqa import FILES, MANIQAMetric, crop_offsets


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
    """``<models>/iqa/ckpt_koniq10k.pt``: torch's init plus noise, score-head bias 0.5 so that scores are not 0."""
    torch.manual_seed(0)
    state = MANIQAMetric().state_dict()
    gen = torch.Generator().manual_seed(1)
    for key, value in state.items():
        if value.is_floating_point() and not key.endswith("attn_mask"):
            value.add_(torch.randn(value.shape, generator=gen) * 0.02)
    state["fc_score.3.bias"].fill_(0.5)
    models = tmp_path_factory.mktemp("models")
    (models / "iqa").mkdir()
    path = models / "iqa" / FILES["koniq"]
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def metric(weight_file):
    # one crop per image keeps the test fast (pyiqa's 20 is the default)
    return MANIQAMetric.load(models_dir=weight_file.parents[1], num_crops=1)


@pytest.fixture(scope="module")
def faces(photos_dir):
    """Two different small photos (enlarged to a 225-pixel shorter side inside the metric, as pyiqa does)."""
    import cv2

    out = []
    for name in ("obama.jpg", "biden.jpg"):
        img = cv2.cvtColor(cv2.imread(str(photos_dir / name)), cv2.COLOR_BGR2RGB)
        out.append(torch.from_numpy(cv2.resize(img, (96, 112), interpolation=cv2.INTER_AREA)).float() / 255.0)
    return torch.stack(out)


def test_state_dict_is_pyiqa_format():
    """Facts from pyiqa's MANIQA (timm vit_base_patch8_224 + MANIQA heads): 316 entries, 135,799,754 values."""
    state = MANIQAMetric().state_dict()
    assert len(state) == 316
    assert sum(v.numel() for v in state.values()) == 135_799_754
    shapes = {
        "vit.cls_token": (1, 1, 768), "vit.pos_embed": (1, 785, 768), "vit.patch_embed.proj.weight": (768, 3, 8, 8),
        "vit.blocks.11.mlp.fc2.weight": (768, 3072), "vit.norm.bias": (768,), "vit.head.weight": (1000, 768),
        "tablock1.1.c_v.weight": (784, 784), "conv1.weight": (768, 3072, 1, 1),
        "swintransformer1.downsample.weight": (768, 768, 3, 3),
        "swintransformer1.layers.1.blocks.1.attn_mask": (49, 16, 16),
        "swintransformer2.layers.0.blocks.0.attn.relative_position_bias_table": (49, 4),
        "swintransformer2.layers.0.blocks.0.attn.relative_position_index": (16, 16),
        "swintransformer2.layers.1.blocks.0.attn.qkv.weight": (1152, 384), "conv2.weight": (384, 768, 1, 1),
        "fc_score.3.weight": (1, 384), "fc_weight.0.weight": (384, 384),
    }
    assert {k: tuple(state[k].shape) for k in shapes} == shapes
    assert "swintransformer1.layers.0.blocks.0.attn_mask" not in state  # unshifted blocks have no mask
    index = state["swintransformer1.layers.0.blocks.0.attn.relative_position_index"]
    assert (index[0, 0].item(), index[0, 15].item(), index[15, 0].item()) == (24, 0, 48)
    assert set(state["swintransformer2.layers.0.blocks.1.attn_mask"].unique().tolist()) == {-100.0, 0.0}


def test_crop_offsets_follow_pyiqa():
    uniform = crop_offsets(1137, 910, 20)  # uniform_crop: 5x5 grid, steps (1137-224)//4, (910-224)//4, first 20
    assert len(uniform) == 20 and uniform[:6] == [(0, 0), (0, 171), (0, 342), (0, 513), (0, 684), (228, 0)]
    assert uniform[-1] == (684, 684)
    assert crop_offsets(225, 300, 20) == [(0, j * 19) for j in range(5)] * 4
    np.random.seed(123)  # pyiqa <= 0.1.11: global seed 123, then random_crop's np.random.randint calls
    expected = [(np.random.randint(0, 1137 - 223), np.random.randint(0, 910 - 223)) for _ in range(20)]
    assert crop_offsets(1137, 910, 20, "random", 123) == expected


def test_scores(metric, faces):
    batch = metric(faces)
    assert batch.shape == (2,) and batch.dtype == torch.float64 and batch.device.type == "cpu"
    assert torch.isfinite(batch).all() and (batch > 0).all()
    assert abs(batch[0] - batch[1]) > 1e-4
    single = metric(faces[1:])
    assert abs(single.item() - batch[1].item()) < 1e-5  # batch == single
    assert metric(faces[1:]).item() == single.item()  # deterministic


def test_load_explicit_path_and_variant(weight_file):
    model = MANIQAMetric.load(path=weight_file, dataset="pipal")
    assert model.swintransformer1.scale == model.swintransformer2.scale == 0.13
    assert (model.crops, model.num_crops, model.seed) == ("uniform", 20, 123)
    assert torch.equal(model.conv2.weight, torch.load(weight_file, weights_only=True)["conv2.weight"])


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MetricUnavailable, match=r"M-IQA skipped: weight file ckpt_koniq10k\.pt missing.*models.iqa"):
        MANIQAMetric.load(models_dir=tmp_path / "models")
    with pytest.raises(MetricUnavailable, match="ckpt_kadid10k.pt"):
        MANIQAMetric.load(models_dir=tmp_path / "models", dataset="kadid")
    with pytest.raises(MetricUnavailable, match="not found"):
        MANIQAMetric.load(path=tmp_path / "nope.pt")


def test_wrong_files(tmp_path):
    corrupt = tmp_path / "ckpt_koniq10k.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(HonestFaceError, match="cannot be read as a MANIQA koniq checkpoint"):
        MANIQAMetric.load(path=corrupt)
    other = tmp_path / "other.pt"
    torch.save({"vit.cls_token": torch.zeros(1, 1, 768), "head.weight": torch.zeros(1, 384)}, other)
    with pytest.raises(HonestFaceError, match="does not match a MANIQA koniq checkpoint.*missing keys"):
        MANIQAMetric.load(path=other)
    small = {"vit.cls_token": torch.zeros(1, 1, 768)}
    torch.save({"params": small}, other)  # pyiqa's nesting key is read
    with pytest.raises(HonestFaceError, match="does not match a MANIQA koniq checkpoint.*missing keys"):
        MANIQAMetric.load(path=other)
    torch.save({"params_ema": small}, other)  # ... and only that one, as pyiqa does
    with pytest.raises(HonestFaceError, match=r"is not a MANIQA koniq checkpoint \(ckpt_koniq10k\.pt\) \(expected a dict of tensors\)"):
        MANIQAMetric.load(path=other)


def test_bad_options_and_input(metric):
    for kwargs in ({"dataset": "live"}, {"crops": "center"}, {"num_crops": 0}, {"seed": -1}):
        with pytest.raises(HonestFaceError, match="MANIQA"):
            MANIQAMetric.load(**kwargs)
    with pytest.raises(HonestFaceError, match="images"):
        metric(torch.zeros(2, 5))
    with pytest.raises(HonestFaceError, match="images"):
        metric(torch.zeros(1, 8, 8, 3))
