"""Training data: degradation reproducibility, identity datasets from real photos, bad-data handling, cache."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from honestface_core.errors import HonestFaceError  # noqa: E402
from training.config import DataConfig, DatasetSpec  # noqa: E402
from training.data import FaceRestorationDataset, PositionSampler  # noqa: E402
from training.degradation import DegradationConfig, degrade, gaussian_kernel, sample_rng  # noqa: E402


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))


def make_identity_folder(root: Path, photos_dir: Path, astronaut: np.ndarray, bad: bool = True) -> Path:
    """obama/ (3 photos + an exact copy), astro/ (astronaut + a re-framed copy); with ``bad``: biden/ (one image),
    empty/, noface/ (two photos without a face) and an unreadable file."""
    (root / "obama").mkdir(parents=True)
    for name in ("obama", "obama2", "obama3"):
        shutil.copy(photos_dir / f"{name}.jpg", root / "obama" / f"{name}.jpg")
    _write(root / "astro" / "a1.png", astronaut)
    _write(root / "astro" / "a2.png", cv2.resize(astronaut[30:470, 10:450], (384, 384), interpolation=cv2.INTER_AREA))
    if bad:
        shutil.copy(photos_dir / "obama.jpg", root / "obama" / "obama_copy.jpg")
        (root / "biden").mkdir()
        shutil.copy(photos_dir / "biden.jpg", root / "biden" / "biden.jpg")
        (root / "empty").mkdir()
        from skimage import data

        _write(root / "noface" / "coffee.png", data.coffee())
        _write(root / "noface" / "rocket.png", data.rocket())
        (root / "astro" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return root


def data_config(root: Path, yunet_path: Path, **kw) -> DataConfig:
    return DataConfig(datasets=[DatasetSpec(str(root))], resolution=64, refs_min=1, refs_max=3,
                      detector="yunet", detector_path=str(yunet_path), **kw)


@pytest.mark.opencv
def test_degradation_is_reproducible_per_seed_and_position(astronaut):
    cfg = DegradationConfig()
    a = degrade(astronaut, cfg, sample_rng(3, 17))
    assert a.shape == astronaut.shape and a.dtype == np.uint8
    assert np.array_equal(a, degrade(astronaut, cfg, sample_rng(3, 17)))
    assert not np.array_equal(a, degrade(astronaut, cfg, sample_rng(3, 18)))
    assert not np.array_equal(a, degrade(astronaut, cfg, sample_rng(4, 17)))
    # the degradation really degrades: mean error grows with the ranges
    mild = DegradationConfig(blur_sigma=(0.1, 0.2), scale=(1.0, 1.0), noise=(0, 0), jpeg=(100, 100))
    strong = DegradationConfig(blur_sigma=(4, 5), scale=(6, 8), noise=(15, 20), jpeg=(60, 65))
    err = [np.abs(degrade(astronaut, c, sample_rng(0, 1)).astype(float) - astronaut).mean() for c in (mild, strong)]
    assert err[0] < 3 < 10 < err[1]


def test_gaussian_kernel_is_normalised_and_anisotropic():
    k = gaussian_kernel(1.0, 4.0, 0.0, 21)
    assert k.sum() == pytest.approx(1.0, abs=1e-5)
    assert (k[10, :] > 1e-3).sum() < (k[:, 10] > 1e-3).sum()  # wider along y


@pytest.mark.opencv
def test_identity_dataset_from_real_photos_counts_bad_data(tmp_path, photos_dir, astronaut, yunet_path):
    root = make_identity_folder(tmp_path / "ids", photos_dir, astronaut)
    logs: list[str] = []
    ds = FaceRestorationDataset(data_config(root, yunet_path), DegradationConfig(), 0, tmp_path / "cache", log=logs.append)
    line = logs[0]
    assert "1 empty identity folders" in line and "1 unreadable" in line and "2 no face" in line
    assert "2 identities with fewer than 2 usable images" in line  # biden (one image) and noface (none usable)
    sources = {t.source: [r.source for r in refs] for t, refs in ds.samples}
    assert set(sources) == {"obama/obama.jpg", "obama/obama2.jpg", "obama/obama3.jpg", "obama/obama_copy.jpg",
                            "astro/a1.png", "astro/a2.png"}
    # never the target itself or its byte-identical copy
    assert sorted(sources["obama/obama.jpg"]) == ["obama/obama2.jpg", "obama/obama3.jpg"]
    assert "obama/obama_copy.jpg" not in sources["obama/obama.jpg"]
    for target, refs in sources.items():
        assert target not in refs and all(r.split("/")[0] == target.split("/")[0] for r in refs)

    s = ds[5]
    assert s["hq"].shape == (3, 64, 64) and s["lq"].shape == (3, 64, 64) and s["refs"].shape == (3, 3, 64, 64)
    assert s["hq"].min() >= -1 and s["hq"].max() <= 1
    k = int(s["ref_mask"].sum())
    assert torch.all(s["refs"][k:] == 0) and (k == 0 or s["refs"][:k].abs().sum() > 0)
    for key in ("hq", "lq", "refs", "ref_mask"):  # a sample is a pure function of (seed, position)
        assert torch.equal(s[key], ds[5][key])
    # every position of one epoch visits every sample once
    assert sorted(ds.index_at(p) for p in range(len(ds))) == list(range(len(ds)))
    # reference dropout 1.0 -> blind samples only
    blind = FaceRestorationDataset(data_config(root, yunet_path, ref_dropout=1.0), DegradationConfig(), 0,
                                   tmp_path / "cache", log=logs.append)
    assert not any(blind[p]["ref_mask"].any() for p in range(8))


def test_near_duplicate_references_are_excluded(tmp_path, photos_dir, astronaut, yunet_path):
    root = tmp_path / "ids"
    _write(root / "astro" / "a1.png", astronaut)
    noisy = np.clip(astronaut.astype(int) + np.random.default_rng(0).integers(-1, 2, astronaut.shape), 0, 255).astype(np.uint8)
    _write(root / "astro" / "a1_resaved.png", noisy)  # different bytes, same picture
    _write(root / "astro" / "a2.png", cv2.resize(astronaut[30:470, 10:450], (384, 384), interpolation=cv2.INTER_AREA))
    ds = FaceRestorationDataset(data_config(root, yunet_path), DegradationConfig(), 0, tmp_path / "cache", log=lambda m: None)
    sources = {t.source: [r.source for r in refs] for t, refs in ds.samples}
    assert sources["astro/a1.png"] == ["astro/a2.png"]
    assert sorted(sources["astro/a2.png"]) == ["astro/a1.png", "astro/a1_resaved.png"]


def test_dataset_with_nothing_usable_fails_clearly(tmp_path, photos_dir, yunet_path):
    root = tmp_path / "ids"
    (root / "empty").mkdir(parents=True)
    (root / "single").mkdir()
    shutil.copy(photos_dir / "biden.jpg", root / "single" / "biden.jpg")
    (root / "single" / "bad.png").write_bytes(b"nope")
    with pytest.raises(HonestFaceError, match="no usable training sample"):
        FaceRestorationDataset(data_config(root, yunet_path), DegradationConfig(), 0, tmp_path / "cache", log=lambda m: None)
    with pytest.raises(HonestFaceError, match="is not a folder"):
        FaceRestorationDataset(data_config(tmp_path / "missing", yunet_path), DegradationConfig(), 0, tmp_path / "cache")


def test_single_image_dataset_and_cache_invalidation(tmp_path, astronaut, yunet_path):
    root = tmp_path / "ffhq"
    _write(root / "00000.png", astronaut)
    _write(root / "00001.png", astronaut[:, ::-1])
    cfg = DataConfig(datasets=[DatasetSpec(str(root), kind="single", aligned=True)], resolution=64)
    ds = FaceRestorationDataset(cfg, DegradationConfig(), 0, tmp_path / "cache", log=lambda m: None)
    assert len(ds) == 2 and not ds[0]["ref_mask"].any()
    before = {t.source: t.sha1 for t, _ in ds.samples}
    # change one source file: its cache entry is recomputed; the other one is reused
    _write(root / "00001.png", np.ascontiguousarray(astronaut[::-1]))
    st = (root / "00001.png").stat()
    os.utime(root / "00001.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds2 = FaceRestorationDataset(cfg, DegradationConfig(), 0, tmp_path / "cache", log=lambda m: None)
    after = {t.source: t.sha1 for t, _ in ds2.samples}
    assert after["00000.png"] == before["00000.png"] and after["00001.png"] != before["00001.png"]


def test_position_sampler_partitions_processes_and_resumes():
    def take(s, n):
        it = iter(s)
        return [next(it) for _ in range(n)]
    r0, r1 = take(PositionSampler(2, 0, 0, 2), 6), take(PositionSampler(2, 0, 1, 2), 6)
    assert not set(r0) & set(r1) and sorted(r0 + r1) == list(range(12))
    assert take(PositionSampler(2, start=2, rank=0, world=2), 2) == r0[4:6]


def test_shipped_configs_parse_and_reject_typos(tmp_path):
    from training.config import load_config
    from training.modeling import model_config_for

    repo = Path(__file__).resolve().parents[2]
    tiny = load_config(repo / "training" / "configs" / "tiny.yaml")
    sd21 = load_config(repo / "training" / "configs" / "sd21_512.yaml")
    assert tiny.data.resolution == 64 and tiny.train.max_steps <= 100
    assert model_config_for(sd21).prompt_dim == 1024 and model_config_for(sd21).lora.rank == 16
    assert sd21.train.mixed_precision == "bf16" and sd21.train.gradient_checkpointing
    (tmp_path / "bad.yaml").write_text("train: {max_step: 3}\n")
    with pytest.raises(HonestFaceError, match="unknown keys"):
        load_config(tmp_path / "bad.yaml")
