"""PSNR / SSIM on Y against scikit-image; LPIPS through its real loading path; clear skips for missing weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from honestface_core.errors import HonestFaceError
from honestface_core.metrics import image_quality as iq


def _y_np(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float64) / 255.0
    return 16.0 + img @ np.array([65.481, 128.553, 24.966])


@pytest.fixture(scope="module")
def pair(astronaut):
    rng = np.random.default_rng(0)
    gt = astronaut[100:228, 150:278]
    noisy = np.clip(gt.astype(np.int16) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
    return gt, noisy


def _t(*imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).float() / 255.0


def test_psnr_matches_skimage(pair):
    gt, noisy = pair
    ours = iq.psnr_y(_t(noisy, gt), _t(gt, gt))
    ref = peak_signal_noise_ratio(_y_np(gt), _y_np(noisy), data_range=255)
    assert ours[0].item() == pytest.approx(ref, rel=1e-7)  # float32 input pixels
    assert torch.isinf(ours[1])


def test_ssim_matches_skimage(pair):
    gt, noisy = pair
    ours = iq.ssim_y(_t(noisy, gt), _t(gt, gt))
    ref = structural_similarity(_y_np(gt), _y_np(noisy), data_range=255, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert ours[0].item() == pytest.approx(ref, rel=1e-6)  # float32 input pixels
    assert ours[1].item() == pytest.approx(1.0)
    assert 0 < ours[0].item() < 0.95


def test_known_psnr_case():
    gt = torch.zeros(1, 16, 16, 3)
    restored = gt.clone()
    restored[..., 1] = 1.0  # G channel fully on -> Y differs by exactly 128.553 everywhere
    assert iq.psnr_y(restored, gt).item() == pytest.approx(10 * np.log10(255 ** 2 / 128.553 ** 2))


def test_bad_shapes():
    with pytest.raises(HonestFaceError, match="differ"):
        iq.psnr_y(torch.zeros(1, 16, 16, 3), torch.zeros(1, 32, 32, 3))
    with pytest.raises(HonestFaceError, match="smaller than"):
        iq.ssim_y(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3))


def test_missing_weights_are_skipped_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    pytest.importorskip("lpips")
    with pytest.raises(iq.MetricUnavailable, match=r"LPIPS skipped: weight file alexnet-owt-7be5be79.pth missing, put it in"):
        iq.LPIPSMetric.load("alex", models_dir=tmp_path / "models")
    with pytest.raises(iq.MetricUnavailable, match=r"FID skipped: weight file inception_v3_google-0cc3c7bd.pth missing"):
        iq.InceptionFeatures(tmp_path / "models")
    assert not (tmp_path / "torch").exists()  # nothing fetched or created


def test_lpips_real_loading_path_with_random_backbone(tmp_path, pair):
    """A random-weight AlexNet file in torchvision's format under models/torchvision loads through the real path."""
    pytest.importorskip("lpips")
    from torchvision.models import alexnet

    torch.manual_seed(0)
    (tmp_path / "torchvision").mkdir()
    state = alexnet(weights=None).state_dict()
    torch.save(state, tmp_path / "torchvision" / iq.TV_FILES["alex"])
    metric = iq.LPIPSMetric.load("alex", models_dir=tmp_path)
    assert torch.equal(metric.model.net.slice1[0].weight, state["features.0.weight"])
    gt, noisy = pair
    d = metric(_t(noisy, gt), _t(gt, gt))
    assert d.shape == (2,) and d[1].item() == pytest.approx(0.0, abs=1e-6) and d[0].item() > 0


def test_frechet_distance_known_case():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (4000, 3))
    b = rng.normal(0, 1, (4000, 3)) + [2.0, 0, 0]
    assert iq.frechet_distance(a, b) == pytest.approx(4.0, abs=0.25)  # |mu1-mu2|^2 with equal covariances
    assert iq.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_fid_features_real_loading_path_with_random_weights(tmp_path):
    """A random-weight Inception-v3 file in torchvision's format loads through the real path; FID enters the report."""
    from torchvision.models import inception_v3

    from honestface_core.metrics.evaluate import build_report

    torch.manual_seed(0)
    (tmp_path / "torchvision").mkdir()
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(),
               tmp_path / "torchvision" / iq.TV_FILES["inception"])
    feats = iq.InceptionFeatures(tmp_path)(torch.rand(3, 64, 64, 3))
    assert feats.shape == (3, 2048) and np.isfinite(feats).all()
    rows = [{"file": f"f{i}", "status": "ok", "notes": [], "PSNR": 30.0 + i, "_inception": feats[[i, (i + 1) % 3]]}
            for i in range(3)]
    report = build_report(rows, {}, [])
    assert "FID" in report["columns"] and report["mean"]["FID"] >= 0 and report["mean"]["PSNR"] == pytest.approx(31.0)
    assert all("_inception" not in r for r in report["rows"])


def test_dists_real_loading_path_and_properties(dists_files, astronaut):
    root, vgg, weights = dists_files
    metric = iq.DISTSMetric.load(root)
    assert torch.equal(metric.features[28].weight, vgg["features.28.weight"])
    assert torch.equal(metric.alpha, weights["alpha"]) and torch.equal(metric.beta, weights["beta"])
    gt = astronaut[100:164, 150:214].astype(np.float64) / 255.0
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, gt.shape)
    levels = [np.clip(gt + s * noise, 0, 1) for s in (0.0, 0.03, 0.1, 0.3)]
    d = metric(_t(*[(x * 255).round().astype(np.uint8) for x in levels]), _t(*[(gt * 255).round().astype(np.uint8)] * 4))
    assert d.shape == (4,) and d[0].item() == pytest.approx(0.0, abs=1e-6)
    assert (d[1:] > d[:-1]).all(), d.tolist()  # more distortion -> larger distance
    swapped = metric(_t((gt * 255).round().astype(np.uint8)), _t((levels[2] * 255).round().astype(np.uint8)))
    assert swapped.item() == pytest.approx(d[2].item(), rel=1e-4)  # symmetric


def test_dists_missing_or_wrong_files(tmp_path, monkeypatch, dists_files):
    root, _, weights = dists_files
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(iq.MetricUnavailable, match=r"DISTS skipped: weight file vgg16-397923af.pth missing, put it in"):
        iq.DISTSMetric.load(tmp_path / "models")
    vgg = root / "torchvision" / iq.TV_FILES["vgg"]
    with pytest.raises(iq.MetricUnavailable, match=r"DISTS skipped: weight file weights.pt .* missing, put it in .*dists"):
        iq.DISTSMetric.load(tmp_path / "models", vgg_path=vgg)
    with pytest.raises(iq.MetricUnavailable, match=r"DISTS skipped: weight file .*nothere.pth.* not found"):
        iq.DISTSMetric.load(vgg_path=tmp_path / "nothere.pth")
    assert not (tmp_path / "torch").exists()  # nothing fetched or created
    bad = tmp_path / "bad.pt"
    torch.save({"alpha": weights["alpha"][:, :10]}, bad)
    with pytest.raises(HonestFaceError, match="not DISTS's weights.pt"):
        iq.DISTSMetric.load(vgg_path=vgg, weights_path=bad)
    with pytest.raises(HonestFaceError, match="does not match torchvision's VGG16"):
        iq.DISTSMetric.load(vgg_path=bad, weights_path=root / "dists" / iq.DISTS_FILE)


def test_corrupt_or_wrong_backbone_files_are_named(tmp_path):
    """LPIPS, FID and the training LPIPS read torchvision files through the shared safe reader: clear errors."""
    from training.losses import LPIPS

    folder = tmp_path / "torchvision"
    folder.mkdir()
    full = folder / iq.TV_FILES["alex"]
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, full)
    (folder / iq.TV_FILES["inception"]).write_bytes(full.read_bytes()[:100])  # truncated
    with pytest.raises(HonestFaceError, match=r"inception_v3_google-0cc3c7bd\.pth.*cannot be read as torchvision's Inception"):
        iq.InceptionFeatures(tmp_path)
    with pytest.raises(HonestFaceError, match=r"has no 'features.0.bias'"):
        iq.LPIPSMetric.load("alex", models_dir=tmp_path)
    with pytest.raises(HonestFaceError, match=r"does not match torchvision's VGG16 .*missing keys: 0.bias"):
        LPIPS(full, full)
