"""Synthetic degradation x_H -> x_L: blur, downsample, noise, JPEG, resize back.

Source: GFPGAN's ``FFHQDegradationDataset`` with its ``options/train_gfpgan_v1.yml`` (github.com/TencentARC/GFPGAN
@ 7552a77): the same order and the default ranges below (41 px kernels, half isotropic / half anisotropic, sigma
0.1-10, downsampling 0.8-8x, noise std 0-20 on 0..255, JPEG 60-100). Our choices where we differ: the kernel is cut
to about 3 sigma (GFPGAN: always 41x41), shrinking uses area interpolation (GFPGAN: bilinear), and there is no
colour jitter, grey conversion or flip. OSDFace's training code is not released, so its degradation is unknown.

Every random draw comes from a per-sample ``numpy.random.Generator`` so a (seed, sample position) pair always
gives the same degraded image, in any process and after a resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class DegradationConfig:
    """Ranges of the degradation parameters (all drawn uniformly; defaults: GFPGAN's training options)."""

    blur_sigma: tuple[float, float] = (0.1, 10.0)
    anisotropic_prob: float = 0.5  # half the kernels are rotated anisotropic Gaussians (GFPGAN's kernel_prob)
    kernel_size: int = 41  # upper bound; the kernel is cropped to about 3 sigma
    scale: tuple[float, float] = (0.8, 8.0)
    noise: tuple[float, float] = (0.0, 20.0)  # std on the 0..255 scale
    jpeg: tuple[int, int] = (60, 100)


def sample_rng(seed: int, position: int, stream: int = 0) -> np.random.Generator:
    """The generator of one sample: independent of the process, the worker and the batch it lands in."""
    return np.random.default_rng([int(seed), int(position), int(stream)])


def gaussian_kernel(sigma_x: float, sigma_y: float, theta: float, size: int) -> np.ndarray:
    """A normalised (size, size) Gaussian kernel with axes sigma_x, sigma_y rotated by theta (radians)."""
    half = size // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).astype(np.float32)


def degrade(image: np.ndarray, cfg: DegradationConfig, rng: np.random.Generator) -> np.ndarray:
    """Degrade one uint8 (H, W, 3) RGB image; returns uint8 of the same size."""
    h, w = image.shape[:2]
    img = image.astype(np.float32)
    # blur
    sigma = rng.uniform(*cfg.blur_sigma)
    if rng.random() < cfg.anisotropic_prob:
        sigma_y, theta = rng.uniform(*cfg.blur_sigma), rng.uniform(0, np.pi)
    else:
        sigma_y, theta = sigma, 0.0
    size = min(cfg.kernel_size, 2 * int(np.ceil(3 * max(sigma, sigma_y))) + 1)
    if size >= 3:
        img = cv2.filter2D(img, -1, gaussian_kernel(sigma, sigma_y, theta, size), borderType=cv2.BORDER_REFLECT)
    # downsample
    scale = rng.uniform(*cfg.scale)
    small = (max(1, round(w / scale)), max(1, round(h / scale)))
    img = cv2.resize(img, small, interpolation=cv2.INTER_LINEAR if scale < 1 else cv2.INTER_AREA)
    # noise
    noise_std = rng.uniform(*cfg.noise)
    img = img + rng.standard_normal(img.shape).astype(np.float32) * noise_std
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    # JPEG
    quality = int(rng.integers(cfg.jpeg[0], cfg.jpeg[1] + 1))
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1] if ok else img
    # back to the input size
    return np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR))
