"""MUSIQ through its real loading path with random-weight files in pyiqa's on-disk format (a ``torch.save``d state
dict); pyiqa's preprocessing facts pinned; clear errors for missing/wrong files and bad input.

Agreement with pyiqa's own ``MUSIQ`` arch (same random weights, real photos) was checked outside the test suite:
CI has neither pyiqa nor the real checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.metrics import iqa_musiq
from honestface_core.metrics.image_quality import MetricUnavailable
from honestface_core.metrics.iqa_musiq import FILES, MUSIQMetric, multiscale_patches


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: far faster than two on a loaded 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _random_state(dataset: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = MUSIQMetric(dataset).state_dict()
    for k, v in state.items():
        noise = torch.randn(v.shape, generator=gen)
        is_norm_weight = k.endswith("weight") and v.dim() == 1
        state[k] = 1.0 + 0.2 * noise if is_norm_weight else 0.05 * noise
    return state


@pytest.fixture(scope="module")
def koniq_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "iqa" / FILES["koniq10k"]
    path.parent.mkdir()
    torch.save(_random_state("koniq10k"), path)
    return path


@pytest.fixture(scope="module")
def model(koniq_file):
    return MUSIQMetric.load(models_dir=koniq_file.parents[1])


@pytest.fixture(scope="module")
def images(astronaut):
    """Two different small photos crops, same size (64 x 96), plus a flipped copy of the first."""
    a = torch.from_numpy(astronaut[30:94, 170:266].copy()).float() / 255.0
    b = torch.from_numpy(astronaut[300:364, 40:136].copy()).float() / 255.0
    return torch.stack([a, b, a.flip(1)])


def test_file_format_pinned():
    """Key count, names and shapes of pyiqa's MUSIQ checkpoints (facts from pyiqa's arch)."""
    koniq, ava = MUSIQMetric("koniq10k").state_dict(), MUSIQMetric("ava").state_dict()
    assert len(koniq) == len(ava) == 248
    assert sum(v.numel() for v in koniq.values()) == 27125825
    facts = {
        "conv_root.weight": (64, 3, 7, 7),
        "block1.conv_proj.weight": (256, 64, 1, 1),
        "block1.gn_proj.bias": (256,),
        "embedding.weight": (384, 16384),
        "transformer_encoder.cls": (1, 1, 384),
        "transformer_encoder.posembed_input.position_emb": (1, 100, 384),
        "transformer_encoder.scaleembed_input.scale_emb": (3, 384),
        "transformer_encoder.transformer.encoderblock_13.attention.out.weight": (384, 384),
        "transformer_encoder.transformer.encoderblock_13.mlp.fc1.weight": (1152, 384),
        "head.weight": (1, 384),
    }
    assert {k: tuple(koniq[k].shape) for k in facts} == facts
    assert tuple(ava["head.0.weight"].shape) == (10, 384) and "head.weight" not in ava
    assert set(FILES.values()) == {"musiq_koniq_ckpt-e95806b9.pth", "musiq_ava_ckpt-e8d3f067.pth",
                                   "musiq_spaq_ckpt-358bb6af.pth", "musiq_paq2piq_ckpt-364c0c84.pth"}


def test_preprocessing_facts():
    """pyiqa's tokens for a 150 x 97 image: 224 scale 224x145 -> 7x5, 384 scale 384x248 -> 12x8, original 5x4."""
    patches, positions, scales = multiscale_patches(torch.zeros(1, 3, 150, 97))
    assert patches.shape == (1, 35 + 96 + 20, 3, 32, 32)
    assert scales.tolist() == [0] * 35 + [1] * 96 + [2] * 20
    rows = [0, 10, 20, 40, 50, 70, 80]  # 7 rows hashed onto the 10-row grid
    assert positions[:35].view(7, 5).tolist() == [[r + c for c in (0, 2, 4, 6, 8)] for r in rows]
    # PyTorch's float nearest-neighbour rule, as pyiqa: not the exact integer floor(i * 10 / 205)
    assert iqa_musiq._hashed_positions(1, 205)[[41, 82, 164]].tolist() == [1, 3, 7]
    # TF "SAME" padding of the original scale: width 97 -> 4 patches (128) with 31 zero columns, 15 left, 16 right
    x = torch.rand(1, 3, 32, 97) * 2 - 1
    orig = multiscale_patches(x)[0][0, -4:]
    assert torch.equal(orig[0, :, :, :15], torch.zeros(3, 32, 15)) and torch.equal(orig[0, :, :, 15:], x[0, :, :, :17])
    assert torch.equal(orig[-1, :, :, :16], x[0, :, :, 81:])
    assert torch.equal(orig[-1, :, :, 16:], torch.zeros(3, 32, 16))


def test_scores(model, images):
    scores = model(images)
    assert scores.shape == (3,) and scores.dtype == torch.float64 and scores.device.type == "cpu"
    assert torch.isfinite(scores).all()
    assert torch.equal(model(images), scores)  # deterministic
    singles = torch.cat([model(images[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(singles, scores, rtol=1e-5, atol=1e-5)
    assert abs(scores[0] - scores[1]) > 1e-3 and abs(scores[0] - scores[2]) > 1e-3
    assert model(images[0]).shape == (1,)  # a single (H, W, 3) image


def test_stem_chunking_does_not_change_scores(model, images, monkeypatch):
    ref = model(images[:1])
    monkeypatch.setattr(iqa_musiq, "_STEM_CHUNK", 7)
    torch.testing.assert_close(model(images[:1]), ref, rtol=1e-5, atol=1e-5)


def test_explicit_path_and_ava_head(tmp_path, koniq_file, images):
    same = MUSIQMetric.load(path=koniq_file)
    assert same.name == "MUSIQ" and same.dataset == "koniq10k"
    ava_file = tmp_path / FILES["ava"]
    torch.save(_random_state("ava", seed=1), ava_file)
    ava = MUSIQMetric.load(models_dir=tmp_path / "unused", path=ava_file, dataset="ava")
    scores = ava(images[:2])
    assert ((scores >= 1.0) & (scores <= 10.0)).all()  # mean of a 10-bin distribution over 1..10


def test_missing_file_is_skipped_with_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MetricUnavailable, match=r"MUSIQ skipped: weight file musiq_koniq_ckpt-e95806b9\.pth missing, "
                                                r"put it in .*models.iqa.* or .*torch.hub.pyiqa"):
        MUSIQMetric.load(models_dir=tmp_path / "models")
    with pytest.raises(MetricUnavailable, match=r"musiq_spaq_ckpt-358bb6af\.pth"):
        MUSIQMetric.load(models_dir=tmp_path / "models", dataset="spaq")
    with pytest.raises(MetricUnavailable, match=r"not found"):
        MUSIQMetric.load(path=tmp_path / "nothere.pth")


def test_wrong_or_corrupt_files(tmp_path, koniq_file):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(HonestFaceError, match="cannot be read as a MUSIQ koniq10k checkpoint"):
        MUSIQMetric.load(path=corrupt)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(HonestFaceError, match="does not match a MUSIQ koniq10k checkpoint"):
        MUSIQMetric.load(path=wrong)
    with pytest.raises(HonestFaceError, match=r"unexpected keys: head\.weight"):  # KonIQ file loaded as AVA
        MUSIQMetric.load(path=koniq_file, dataset="ava")
    with pytest.raises(HonestFaceError, match="Use one of koniq10k, ava, spaq, paq2piq"):
        MUSIQMetric.load(path=koniq_file, dataset="kadid")


def test_bad_input(model):
    with pytest.raises(HonestFaceError):
        model(torch.rand(1, 3, 64, 64))  # channels first
    with pytest.raises(HonestFaceError):
        model(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(HonestFaceError):
        model(torch.rand(1, 8, 8, 3))  # too small
