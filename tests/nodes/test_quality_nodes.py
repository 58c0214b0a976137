"""HonestFace Quality Metric Loader / Image Quality nodes inside a real ComfyUI (in-process), with a random-weight
MUSIQ file in pyiqa's on-disk format in ComfyUI's models/iqa."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.metrics.iqa_musiq import FILES, MUSIQMetric
from honestface_core.metrics.no_reference import metric_choices

pytestmark = pytest.mark.comfy


@pytest.fixture
def iqa_file(comfy_inprocess, monkeypatch, tmp_path):
    """MUSIQ (KonIQ) random weights in <ComfyUI>/models/iqa; pyiqa's cache pointed at an empty folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    path = Path(comfy_inprocess.folder_paths.models_dir) / "iqa" / FILES["koniq10k"]
    path.parent.mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(MUSIQMetric().state_dict(), path)
    yield path
    path.unlink()


def test_declarations(comfy_inprocess):
    loader = comfy_inprocess.pack_nodes["HonestFaceQualityMetricLoader"]
    assert loader.INPUT_TYPES()["required"]["metric"][0] == metric_choices()
    assert metric_choices()[0] == "MUSIQ (koniq10k)" and "C-IQA (clipiqa)" in metric_choices()
    assert "iqa" in comfy_inprocess.folder_paths.folder_names_and_paths


def test_missing_file_names_it_and_its_folder(comfy_inprocess, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(HonestFaceError, match=r"MUSIQ: weight file musiq_koniq_ckpt-e95806b9.pth missing, put it in .*iqa"):
        comfy_inprocess.run("HonestFaceQualityMetricLoader", metric="MUSIQ (koniq10k)")


def test_scores_every_image(comfy_inprocess, iqa_file, astronaut):
    (metric,) = comfy_inprocess.run("HonestFaceQualityMetricLoader", metric="MUSIQ (koniq10k)")
    a = torch.from_numpy(astronaut[:96, :96].copy()).float() / 255
    images = torch.stack([a, a.flip(0), torch.full_like(a, 0.5)])
    out = comfy_inprocess.run("HonestFaceImageQuality", images=images, quality_metric=metric)
    mean, text = out["result"]
    report = json.loads(text)
    assert out["ui"]["text"] == [text] and report["metric"] == "MUSIQ (koniq10k)" and report["images"] == 3
    direct = metric(images).tolist()
    assert report["scores"] == pytest.approx(direct, abs=1e-5) and mean == pytest.approx(sum(direct) / 3, abs=1e-5)
    assert len(set(report["scores"])) == 3
    with pytest.raises(HonestFaceError, match="images"):
        comfy_inprocess.run("HonestFaceImageQuality", images=torch.zeros(0, 64, 64, 3), quality_metric=metric)


def test_file_found_through_extra_model_paths(comfy_inprocess, test_models_dir, monkeypatch, tmp_path):
    """The harness registers <test models>/iqa through extra_model_paths.yaml, before ComfyUI's own models/iqa."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    path = test_models_dir / "iqa" / FILES["ava"]
    path.parent.mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(MUSIQMetric("ava").state_dict(), path)
    try:
        (metric,) = comfy_inprocess.run("HonestFaceQualityMetricLoader", metric="MUSIQ (ava)")
        assert metric.dataset == "ava"
    finally:
        path.unlink()
    with pytest.raises(HonestFaceError, match=FILES["ava"]):
        comfy_inprocess.run("HonestFaceQualityMetricLoader", metric="MUSIQ (ava)")
