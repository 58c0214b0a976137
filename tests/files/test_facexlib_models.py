"""facexlib loaders: real facexlib classes and loading code on random-weight files in the released layout."""

from __future__ import annotations

import shutil

import pytest
import torch

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.files.facexlib_models import (AWING_FILE, PARSENET_FILE, load_awing, load_bisenet, load_parsenet,
                                             load_retinaface)
from honestface_core.face.parsing import FACE_REGION_LABELS, LABELS, FaceParser


def test_written_files_have_the_released_layout(test_models_dir):
    folder = test_models_dir / "facexlib"
    r50 = torch.load(folder / "detection_Resnet50_Final.pth", map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in r50)
    assert "state_dict" in torch.load(folder / AWING_FILE, map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in torch.load(folder / PARSENET_FILE, map_location="cpu", weights_only=True))


@torch.no_grad()
def test_loaders_construct_load_and_run(test_models_dir):
    """Random weights: only shapes are checked, never detections."""
    x = torch.rand(1, 3, 64, 64)
    for net in ("resnet50", "mobilenet0.25"):
        loc, conf, landm = load_retinaface(test_models_dir, net)(x)
        assert loc.shape[-1] == 4 and conf.shape[-1] == 2 and landm.shape[-1] == 10
    heat = load_awing(test_models_dir)(torch.rand(1, 3, 256, 256))  # AWing's fixed 256 input
    assert heat[0][-1].shape[1] >= 98
    crops = torch.rand(2, 96, 96, 3)
    for kind in ("parsenet", "bisenet"):
        parser = FaceParser.from_models_dir(test_models_dir, kind, input_size=64)
        labels = parser.parse(crops)
        assert labels.shape == (2, 96, 96) and labels.dtype == torch.long and 0 <= labels.min() and labels.max() < len(LABELS)
        mask = parser.face_mask(crops)
        assert mask.shape == (2, 96, 96) and 0 <= mask.min() and mask.max() <= 1 and mask[:, 0].max() == 0


def test_label_maps_are_one_set():
    from honestface_core.face.parsing import PARSENET_TO_LABELS

    assert sorted(PARSENET_TO_LABELS) == list(range(19))
    assert [LABELS[i] for i in FACE_REGION_LABELS] == ["skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip"]
    assert LABELS[PARSENET_TO_LABELS[13]] == "hair" and LABELS[PARSENET_TO_LABELS[2]] == "nose"


def test_missing_and_corrupt_files(tmp_path, test_models_dir):
    with pytest.raises(MissingModelError) as e:
        load_parsenet(tmp_path)
    assert PARSENET_FILE in str(e.value) and str(tmp_path / "facexlib") in str(e.value)
    folder = tmp_path / "facexlib"
    folder.mkdir()
    (folder / PARSENET_FILE).write_bytes(b"PK\x03\x04 this is not a torch file")
    with pytest.raises(HonestFaceError, match=PARSENET_FILE):
        load_parsenet(tmp_path)
    # a real file of the wrong network
    shutil.copy(test_models_dir / "facexlib" / AWING_FILE, folder / "parsing_bisenet.pth")
    with pytest.raises(HonestFaceError, match="parsing_bisenet.pth"):
        load_bisenet(tmp_path)
