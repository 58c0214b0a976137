"""PSNR / SSIM on Y against scikit-image; LPIPS through its real loading path; FID equal to pytorch-fid's; clear
skips for missing weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from honestface_core.errors import HonestFaceError
from honestface_core.metrics import fid
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


def test_ssim_matches_skimage(pair, astronaut):
    """Our SSIM runs in float32, scikit-image's in float64. Tolerance rel 1e-5: float32 rounds the local second
    moments E[x^2] (up to ~1e4 after centring each image on its mean) to ~1e-3, against c2 = 58.5 in the
    denominator; in large flat regions that error is systematic, not averaged away. Measured on 33 pairs (8 photos x
    noise / blur / JPEG q30 / low contrast, 1 and 2 threads): at most 4.6e-6 (the full astronaut frame as JPEG q30,
    asserted below), 2e-7 on the noisy crop. A real error is far larger: the sample covariance moves SSIM by 8e-4,
    sigma 1.4 instead of 1.5 by 7e-3."""
    import cv2

    gt, noisy = pair
    ours = iq.ssim_y(_t(noisy, gt), _t(gt, gt))
    ref = structural_similarity(_y_np(gt), _y_np(noisy), data_range=255, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert ours[0].item() == pytest.approx(ref, rel=1e-5)
    assert ours[1].item() == pytest.approx(1.0)
    assert 0 < ours[0].item() < 0.95
    ok, enc = cv2.imencode(".jpg", astronaut, [cv2.IMWRITE_JPEG_QUALITY, 30])
    jpeg = cv2.imdecode(enc, cv2.IMREAD_UNCHANGED)
    ref = structural_similarity(_y_np(astronaut), _y_np(jpeg), data_range=255, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False)
    assert iq.ssim_y(_t(jpeg), _t(astronaut))[0].item() == pytest.approx(ref, rel=1e-5)


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
    with pytest.raises(iq.MetricUnavailable, match=r"FID skipped: weight file pt_inception-2015-12-05-6726825d.pth "
                                                    r"\(pytorch-fid's Inception\) missing, put it in .*models/fid"):
        fid.FIDInceptionFeatures(tmp_path / "models")
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
    assert fid.frechet_distance(a, b) == pytest.approx(4.0, abs=0.25)  # |mu1-mu2|^2 with equal covariances
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def _pytorch_fid_random_weights(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """A random-weight state dict in pytorch-fid's file format, built with pytorch-fid's own classes (as its
    ``fid_inception_v3`` builds the network). BatchNorm statistics are set from ``images`` (N, 3, 299, 299) in
    [-1, 1], so the features are well scaled and differ per image (random BN-free weights would shrink them to ~0)."""
    from pytorch_fid import inception as pfi

    torch.manual_seed(0)
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    for name, block in (("Mixed_5b", pfi.FIDInceptionA(192, 32)), ("Mixed_5c", pfi.FIDInceptionA(256, 64)),
                        ("Mixed_5d", pfi.FIDInceptionA(288, 64)), ("Mixed_6b", pfi.FIDInceptionC(768, 128)),
                        ("Mixed_6c", pfi.FIDInceptionC(768, 160)), ("Mixed_6d", pfi.FIDInceptionC(768, 160)),
                        ("Mixed_6e", pfi.FIDInceptionC(768, 192)), ("Mixed_7b", pfi.FIDInceptionE_1(1280)),
                        ("Mixed_7c", pfi.FIDInceptionE_2(2048))):
        setattr(net, name, block)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the one calibration batch
    with torch.no_grad():
        net.train()(images)
    return net.eval().state_dict()


def test_fid_equals_pytorch_fid_on_the_same_files(tmp_path, monkeypatch, photos_dir, astronaut):
    """``honestface evaluate`` FID (aligned 512 crops) equals pytorch-fid's ``calculate_fid_given_paths`` on the same
    PNG files with the same random weights file (8 real photo crops vs degraded copies).

    Tolerance: both run the same float32 network on the same pixels and the same float64 statistics (np.cov,
    scipy's sqrtm). Only the order of float32 sums inside the convolutions can differ (batch of 2 per pair here, 8
    there; CPU kernels): measured, a different conv kernel (channels-last input) moved the features by 6e-5 of their
    scale and FID by 4e-7 relative; on this machine the two are equal to the last bit. rel=2e-6 allows that with
    margin, while torchvision's pooling (count_include_pad) changes FID by 10 % and an antialiased resize by 60 %."""
    pfs = pytest.importorskip("pytorch_fid.fid_score")
    import cv2

    from honestface_core.metrics.evaluate import evaluate_folders
    from skimage import data

    photos = [cv2.imread(str(p))[..., ::-1] for p in sorted(photos_dir.glob("*.jpg"))]
    photos += [astronaut, data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    gt, restored = [], []
    for im in photos:
        h, w = im.shape[:2]
        s = min(h, w)
        crop = cv2.resize(np.ascontiguousarray(im[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]),
                          (512, 512), interpolation=cv2.INTER_AREA)
        noisy = cv2.GaussianBlur(crop, (0, 0), 3) + rng.normal(0, 8, crop.shape)
        gt.append(crop)
        restored.append(np.clip(noisy, 0, 255).astype(np.uint8))
    for name, ims in (("gt", gt), ("restored", restored)):
        (tmp_path / name).mkdir()
        for i, im in enumerate(ims):
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), im[..., ::-1])
    x = torch.from_numpy(np.stack(gt + restored)).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    hub = tmp_path / "torch" / "hub" / "checkpoints"  # pytorch-fid's own cache: it loads from here, no download
    hub.mkdir(parents=True)
    torch.save(_pytorch_fid_random_weights(x), hub / fid.FID_FILE)
    (tmp_path / "models" / "fid").mkdir(parents=True)
    (tmp_path / "models" / "fid" / fid.FID_FILE).write_bytes((hub / fid.FID_FILE).read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    theirs = pfs.calculate_fid_given_paths([str(tmp_path / "restored"), str(tmp_path / "gt")], 50, "cpu", 2048, 0)
    report = evaluate_folders(tmp_path / "restored", tmp_path / "gt", landmarks="dlib68", models_dir=tmp_path / "models",
                              aligned=True, identity="none", progress=False, quality=[])
    ours = report["mean"]["FID"]
    print(f"FID ours {ours!r} pytorch-fid {theirs!r} relative difference {ours / theirs - 1:.2e}")
    assert theirs > 10  # degraded copies are far from the originals even with random weights
    assert ours == pytest.approx(theirs, rel=2e-6)
    assert "FID" in report["columns"] and all("_inception" not in r for r in report["rows"])
    assert fid.FID_FILE in report["meta"]["fid"] and not any(s.startswith("FID") for s in report["skipped"])
    assert str((tmp_path / "models" / "fid" / fid.FID_FILE)) == str(fid.FIDInceptionFeatures(tmp_path / "models").path)


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
    (tmp_path / "fid").mkdir()
    (tmp_path / "fid" / fid.FID_FILE).write_bytes(full.read_bytes()[:100])  # truncated
    with pytest.raises(HonestFaceError, match=r"pt_inception-2015-12-05-6726825d\.pth.*cannot be read as pytorch-fid's"):
        fid.FIDInceptionFeatures(tmp_path)
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "fid" / fid.FID_FILE)
    with pytest.raises(HonestFaceError, match=r"does not match pytorch-fid's Inception .*missing keys"):
        fid.FIDInceptionFeatures(tmp_path)
    with pytest.raises(HonestFaceError, match=r"has no 'features.0.bias'"):
        iq.LPIPSMetric.load("alex", models_dir=tmp_path)
    with pytest.raises(HonestFaceError, match=r"does not match torchvision's VGG16 .*missing keys: 0.bias"):
        LPIPS(full, full)
