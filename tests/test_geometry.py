"""Geometry: the similarity fit, exact inverses, the warp (pixel exact, round trip, batched) and the antialiased
warp that every FFHQ -> ArcFace crop goes through."""

from __future__ import annotations

import numpy as np
import torch

from honestface_core.geometry import (ARCFACE_TEMPLATE_112, FFHQ_TEMPLATE_512, estimate_similarity, ffhq_to_arcface,
                                      invert_affine, template_for_size, warp_affine, warp_antialiased)


def _apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


def test_similarity_recovers_known_transform_and_is_least_squares():
    rng = np.random.default_rng(1)
    ang, s, t = 0.4, 2.3, np.array([13.0, -7.5])
    true = np.hstack([s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]), t[:, None]])
    src = rng.normal(size=(5, 2)) * 40
    assert np.allclose(estimate_similarity(src, _apply(true, src)), true, atol=1e-9)
    # with noise the fit beats small perturbations of itself (least squares)
    dst = _apply(true, src) + rng.normal(size=(5, 2))
    m = estimate_similarity(src, dst)
    base = ((_apply(m, src) - dst) ** 2).sum()
    for _ in range(20):
        p = m + rng.normal(size=(2, 3)) * 1e-3
        p[:, :2] = m[:, :2] + (lambda a, b: np.array([[a, -b], [b, a]]))(*rng.normal(size=2) * 1e-3)
        assert ((_apply(p, src) - dst) ** 2).sum() >= base
    # mirrored points give a rotation, never a reflection
    assert np.linalg.det(estimate_similarity(src, src * [-1, 1])[:, :2]) > 0
    assert np.allclose(template_for_size(256), FFHQ_TEMPLATE_512 / 2) and ARCFACE_TEMPLATE_112.shape == (5, 2)


def test_invert_affine_numpy_torch_batches():
    rng = np.random.default_rng(2)
    m = rng.normal(size=(4, 2, 3)) + np.array([[1.0, 0, 0], [0, 1.0, 0]])
    inv = invert_affine(m)
    pts = rng.normal(size=(7, 2)) * 100
    for a, b in zip(m, inv):
        assert np.allclose(_apply(b, _apply(a, pts)), pts, atol=1e-8)
    assert torch.allclose(invert_affine(torch.from_numpy(m)), torch.from_numpy(inv))
    assert np.allclose(invert_affine(invert_affine(m)), m)


def test_warp_is_pixel_exact_on_linear_images():
    """Bilinear sampling reproduces linear functions exactly, so the warp must equal f(M^-1(x)) to float error."""
    h, w = 37, 53
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    img = torch.stack([0.3 * xx + 0.1 * yy + 2, -0.2 * xx + 0.5 * yy, 0.05 * xx * 0 + 1.0])[None]
    m = np.array([[0.9, 0.2, -3.0], [-0.15, 1.1, 2.5]])
    out = warp_affine(img, torch.from_numpy(m)[None], (30, 40), padding_mode="zeros")[0]
    inv = invert_affine(m)
    v, u = np.meshgrid(np.arange(30), np.arange(40), indexing="ij")
    src = _apply(inv, np.stack([u.ravel(), v.ravel()], 1).astype(float))
    inside = (src[:, 0] >= 0) & (src[:, 0] <= w - 1) & (src[:, 1] >= 0) & (src[:, 1] <= h - 1)
    expect = 0.3 * src[:, 0] + 0.1 * src[:, 1] + 2
    got = out[0].numpy().ravel()
    assert inside.sum() > 500 and np.abs(got[inside] - expect[inside]).max() < 1e-9


def test_warp_roundtrip_and_batched_index():
    rng = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 40, 48, generator=rng, dtype=torch.float64)
    imgs = torch.nn.functional.avg_pool2d(imgs, 3, 1, 1)  # smooth enough for two resamplings
    m = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],            # identity on image 1
                      [[0.8, 0.1, 4.0], [-0.1, 0.8, 3.0]],            # similarity on image 0
                      [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)  # identity on image 0
    idx = torch.tensor([1, 0, 0])
    out = warp_affine(imgs, m, (40, 48), idx)
    assert torch.allclose(out[0], imgs[1], atol=1e-12) and torch.allclose(out[2], imgs[0], atol=1e-12)
    # integer translation is exact
    t = torch.tensor([[[1.0, 0, 3.0], [0, 1.0, -2.0]]], dtype=torch.float64)
    moved = warp_affine(imgs[:1], t, (40, 48), padding_mode="zeros")[0]
    assert torch.allclose(moved[:, :38, 3:], imgs[0, :, 2:40, :45], atol=1e-12)  # dst(x, y) = src(x - 3, y + 2)
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
    # wavelengths long enough that two bilinear resamplings stay well inside the bound (measured 0.009; periods
    # 1.5x shorter gave 0.019), short enough that a quarter-pixel offset of the way back fails it (0.034-0.042)
    waves = [torch.sin(xx / 7.5) * torch.cos(yy / 9), torch.cos(xx / 10.5), torch.sin(yy / 6)]
    smooth = torch.stack(waves)[None].double()
    there = warp_affine(smooth, m[1:2], (40, 48))
    back = warp_affine(there, invert_affine(m[1:2]), (40, 48))[0]
    assert (back - smooth[0])[:, 8:-8, 8:-8].abs().max() < 0.02


def test_antialiased_warp_does_not_alias():
    """A one-pixel checkerboard shrunk 4.6x (512 FFHQ -> 112 ArcFace) averages to grey with the antialiased warp;
    a plain bilinear warp of it keeps sampling black or white pixels."""
    yy, xx = torch.meshgrid(torch.arange(512), torch.arange(512), indexing="ij")
    board = ((xx + yy) % 2).float()[None, None].expand(2, 3, 512, 512)
    m = ffhq_to_arcface(512)
    smooth = warp_antialiased(board, m, 112, padding_mode="border")
    plain = warp_affine(board, torch.from_numpy(m).float().expand(2, 2, 3), 112, padding_mode="border")
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert (smooth[inner] - 0.5).abs().max() < 0.05 and (plain[inner] - 0.5).abs().max() > 0.3
    # differentiable, on the input's device and dtype
    x = board[:1].clone().requires_grad_(True)
    warp_antialiased(x, m, 112).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # a warp that does not shrink by 2x is the plain warp
    same = np.array([[0.9, 0.0, 3.0], [0.0, 0.9, 1.0]])
    assert torch.equal(warp_antialiased(board[:1], same, 64), warp_affine(board[:1], torch.from_numpy(same).float()[None], 64))
