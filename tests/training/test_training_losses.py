"""Stage-2 losses and the latent discriminator: LPIPS and OSDFace's edge-aware DISTS from local files, fallbacks,
masked L_MFA, L_ID, GAN terms."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch.nn.functional as F  # noqa: E402

from honestface_core.errors import HonestFaceError, MissingModelError  # noqa: E402
from honestface_core.metrics.image_quality import DISTSMetric  # noqa: E402
from honestface_core.model.iresnet import FaceBackbone, IResNet  # noqa: E402
from training.discriminator import LatentDiscriminator  # noqa: E402
from training.config import LossConfig  # noqa: E402
from training.losses import (LPIPS, EdgeAwareDISTS, EdgeLoss, build_perceptual, discriminator_loss,  # noqa: E402
                             generator_gan_loss, identity_loss, mfa_loss)
from training.modeling import ellipse_mask, face_region_mask  # noqa: E402


def _write_lpips_files(folder: Path) -> tuple[Path, Path]:
    """Random weights in the exact formats: torchvision vgg16 state dict and LPIPS v0.1 ``vgg.pth``."""
    from honestface_core.metrics.vgg16 import VGG16_TAP_CHANNELS as _LPIPS_CHANNELS, vgg16_features

    gen = torch.Generator().manual_seed(0)
    vgg = {}
    for name, t in vgg16_features(lambda c: torch.nn.MaxPool2d(2)).state_dict().items():  # torchvision's key names and shapes
        cin = t.shape[1] if t.ndim == 4 else 1
        vgg[f"features.{name}"] = torch.randn(t.shape, generator=gen) * (2 / (9 * cin)) ** 0.5 if t.ndim == 4 \
            else torch.zeros(t.shape)
    vgg["classifier.0.weight"] = torch.zeros(8, 8)  # ignored (torchvision's file has the classifier too)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) for i, c in enumerate(_LPIPS_CHANNELS)}
    torch.save(vgg, folder / "vgg16-397923af.pth")
    torch.save(lin, folder / "vgg.pth")
    return folder / "vgg16-397923af.pth", folder / "vgg.pth"


def test_lpips_loads_local_files_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no VGG16 in torch's hub cache
    vgg, lin = _write_lpips_files(tmp_path)
    lp = build_perceptual(LossConfig(perceptual_kind="auto", vgg16=str(vgg), lpips_lin=str(lin)))
    assert isinstance(lp, LPIPS)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert float(lp(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(lp(x, x.flip(-1))) > 0
    assert isinstance(build_perceptual(LossConfig(perceptual_kind="auto")), EdgeLoss)  # documented fallback
    with pytest.raises(MissingModelError, match="vgg16"):
        build_perceptual(LossConfig(perceptual_kind="lpips", vgg16=str(tmp_path / "vgg16-397923af.pth.missing"),
                                    lpips_lin=str(lin)))
    with pytest.raises(HonestFaceError, match="perceptual_kind.*'dists'.*edge_dists"):
        build_perceptual(LossConfig(perceptual_kind="dists"))


def test_edge_loss_prefers_sharp_matches():
    x = torch.zeros(1, 3, 32, 32)
    x[..., 8:24, 8:24] = 1
    blurred = torch.nn.functional.avg_pool2d(x, 5, 1, 2)
    assert float(EdgeLoss()(x, x)) < 1e-3 < float(EdgeLoss()(blurred, x))


def _osdface_edges(x01: torch.Tensor) -> torch.Tensor:
    """OSDFace's EdgeDetectionModel written out independently: channel-mean grey, its Sobel kernels (zero padding
    1), sqrt(gx^2 + gy^2 + 1e-6)."""
    grey = x01.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]).view(1, 1, 3, 3)
    ky = torch.tensor([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]).view(1, 1, 3, 3)
    gx, gy = F.conv2d(grey, kx, padding=1), F.conv2d(grey, ky, padding=1)
    return torch.sqrt(gx ** 2 + gy ** 2 + 1e-6)


@pytest.fixture()
def face_pair(astronaut):
    """A 64 px crop of the astronaut's face in [-1, 1], and the crop one row lower (a real, different image)."""
    t = torch.from_numpy(astronaut).permute(2, 0, 1).float().div(127.5).sub(1)
    return t[None, :, 90:154, 160:224].contiguous(), t[None, :, 91:155, 160:224].contiguous()


def test_edge_aware_dists_on_known_pairs(dists_files, face_pair, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    models, _, _ = dists_files
    loss = build_perceptual(LossConfig(perceptual_kind="edge_dists"), models)  # the evaluation's lookup in models/
    assert isinstance(loss, EdgeAwareDISTS)
    assert isinstance(build_perceptual(LossConfig(perceptual_kind="auto"), models), EdgeAwareDISTS)
    x, y = face_pair
    # identical images: both terms are 0
    image, edge = loss.terms(x, x)
    assert float(image) == pytest.approx(0.0, abs=1e-6) and float(edge) == pytest.approx(0.0, abs=1e-6)
    # the value is DISTS(x, y) + DISTS(edge(x), edge(y)) of the evaluation's metric, on [0, 1] images
    metric = DISTSMetric.load(models)
    a, b = (torch.cat([x, y]) + 1) / 2, (torch.cat([y, x]) + 1) / 2
    ea, eb = _osdface_edges(a), _osdface_edges(b)
    direct = metric(a.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1)).mean() + \
        metric(ea.expand(-1, 3, -1, -1).permute(0, 2, 3, 1), eb.expand(-1, 3, -1, -1).permute(0, 2, 3, 1)).mean()
    value = loss(torch.cat([x, y]), torch.cat([y, x]))
    assert float(value) > 0.01
    assert float(value) == pytest.approx(float(direct), rel=1e-5)
    # pyiqa feeds OSDFace's one-channel edge map by broadcasting: the same number as the three-channel copy
    _, edge = loss.terms(torch.cat([x, y]), torch.cat([y, x]))
    assert float(metric.distance(ea, eb).mean()) == pytest.approx(float(edge), rel=1e-5)
    # a blurred copy changes edges everywhere, a brightness shift only at the zero-padded border: the blur raises
    # the edge term far more, although the shift moves every pixel by more than the blur does on average
    blurred = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, 1)
    brighter = (x + 0.2).clamp(-1, 1)
    assert (brighter - x).abs().mean() > (blurred - x).abs().mean()
    edge_blur, edge_shift = float(loss.terms(blurred, x)[1]), float(loss.terms(brighter, x)[1])
    print({"edge_blur": edge_blur, "edge_shift": edge_shift})
    assert edge_blur > 2 * edge_shift > 0
    # differentiable with respect to the restored image (the DISTS weights stay frozen)
    fake = x.clone().requires_grad_(True)
    loss(fake, blurred).backward()
    assert fake.grad.abs().sum() > 0 and not any(p.requires_grad for p in loss.parameters())


def test_edge_aware_dists_missing_files_name_the_file(dists_files, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    models, _, _ = dists_files
    with pytest.raises(MissingModelError, match=r"vgg16-397923af\.pth.*not found in '.*models/torchvision'"):
        build_perceptual(LossConfig(perceptual_kind="edge_dists"), tmp_path / "models")
    shutil.copytree(models / "torchvision", tmp_path / "models" / "torchvision")
    with pytest.raises(MissingModelError, match=r"weights\.pt.*not found in '.*models/dists'.*DISTS_pytorch"):
        build_perceptual(LossConfig(perceptual_kind="edge_dists"), tmp_path / "models")
    with pytest.raises(MissingModelError, match=r"mine\.pt"):
        build_perceptual(LossConfig(perceptual_kind="edge_dists", dists_weights=str(tmp_path / "mine.pt")), models)


def _backbone() -> FaceBackbone:
    torch.manual_seed(0)
    net = IResNet((1, 1, 1, 1), (8, 16, 32, 64))
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    return FaceBackbone(net, feature_stage=4)


def test_mfa_only_sees_the_masked_face_region():
    bb = _backbone()
    real = torch.rand(2, 3, 64, 64) * 2 - 1
    mask = ellipse_mask(64, 2)
    assert mask[0, 0, 36, 32] > 0.99 and mask[0, 0, 0, 0] < 1e-3  # face centre in, corner out
    corner = real.clone()
    corner[..., :6, :6] = -real[..., :6, :6]  # outside the ArcFace crop and the mask
    centre = real.clone()
    centre[..., 28:44, 24:40] = 1.0
    assert float(mfa_loss(bb, real, real, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(mfa_loss(bb, corner, real, mask)) < 1e-6
    assert float(mfa_loss(bb, centre, real, mask)) > 1e-3
    # gradients reach the restored image, only where the mask is
    fake = real.clone().requires_grad_(True)
    mfa_loss(bb, fake + 0.1 * torch.randn_like(fake), real, mask).backward()
    assert fake.grad[..., 28:44, 24:40].abs().sum() > 0
    assert face_region_mask(real).shape == (2, 1, 64, 64)


def test_identity_loss_and_gan_terms():
    bb = _backbone()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert float(identity_loss(bb.embed(x), bb.embed(x))) == pytest.approx(0.0, abs=1e-5)
    assert float(identity_loss(bb.embed(x), bb.embed(x.flip(0)))) > 0
    real, fake = torch.full((4,), 3.0), torch.full((4,), -3.0)
    assert float(discriminator_loss(real, fake, "hinge")) == 0.0
    assert float(discriminator_loss(fake, real, "hinge")) == 8.0
    assert float(generator_gan_loss(real, "ns")) < float(generator_gan_loss(fake, "ns"))


def test_latent_discriminator_is_conditioned_on_the_prompt():
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    d = LatentDiscriminator(4, 64, alphas, channels=8, depth=2, noise_t=(0, 0))
    z, t = torch.randn(2, 4, 16, 16), torch.zeros(2, dtype=torch.long)
    p1, p2 = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    out = d(z, p1, t)
    assert out.shape == (2, 1, 4, 4)
    assert not torch.allclose(out, d(z, p2, t))
    zt, tt = d.noise(z, torch.Generator().manual_seed(0))
    assert torch.all(tt == 0)
    assert torch.allclose(zt, z * alphas[0].sqrt(), atol=0.2)  # t = 0 adds almost no noise
