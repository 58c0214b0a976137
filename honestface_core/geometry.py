"""Affine geometry of face crops: the templates, the similarity fit, exact inverses and the one warp.

Pixel convention everywhere (as OpenCV): pixel ``(x, y)`` has its centre at integer coordinates, the image
spans ``[-0.5, W - 0.5]``. Matrices are ``(2, 3)`` and map source pixel coordinates to destination pixel
coordinates: ``dst = M[:, :2] @ src + M[:, 2]``.

The warp (docs/ARCHITECTURE.md "Warps"): :func:`warp_affine` samples with ``grid_sample`` on the tensor's device
(differentiable, no host reads); :func:`warp_antialiased` first shrinks a footprint sampled at less than half its
scale, so nothing aliases. CPU float32 images take OpenCV's ``warpAffine`` with the same bicubic kernel
(:func:`uses_opencv`) because it is 10-30x faster there. Alignment, paste-back and both ArcFace crops (the
identity encoders' and the model's backbone) warp through here. Nothing here knows about faces beyond the
templates, so the model may use it without depending on the face pipeline.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from honestface_core.errors import HonestFaceError

FFHQ_TEMPLATE_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
"""Five-point FFHQ template for 512x512 crops (left eye, right eye, nose, left/right mouth corner), the one
facexlib, GFPGAN and CodeFormer use, so crops match what FFHQ-trained restorers saw."""

ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
"""insightface's ArcFace template for 112x112 recognition crops."""


def template_for_size(size: int) -> np.ndarray:
    """FFHQ template scaled to a ``size`` x ``size`` crop (plain scaling, as facexlib does)."""
    if int(size) < 16:
        raise HonestFaceError("crop size", f"{size} is too small", "Use a crop size of at least 16 (512 is standard)")
    return FFHQ_TEMPLATE_512 * (float(size) / 512.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping ``src`` to ``dst``.

    Umeyama's closed form. ``src`` and ``dst`` are ``(K, 2)`` with K >= 2. Returns a float64 ``(2, 3)`` matrix.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise HonestFaceError("landmarks", f"need two matching point sets of at least 2 points, got {src.shape} and {dst.shape}",
                              "Pass 5-point landmarks from a face detector")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise HonestFaceError("landmarks", "contain NaN or infinite values", "Re-run face detection")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0 ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise HonestFaceError("landmarks", "all points coincide", "Re-run face detection")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def invert_affine(m: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Exact inverse of ``(..., 2, 3)`` affine matrices (numpy or torch, any batch shape).

    Closed form (no ``linalg.inv``, which checks its result on the host and so waits for a GPU)."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    stack = torch.stack if isinstance(m, torch.Tensor) else np.stack
    a_inv = stack([stack([d, -b], -1), stack([-c, a], -1)], -2) / det[..., None, None]
    return (torch.cat if isinstance(m, torch.Tensor) else np.concatenate)([a_inv, -a_inv @ m[..., 2:]], -1)


def _to3(m: torch.Tensor) -> torch.Tensor:
    bottom = torch.zeros(*m.shape[:-2], 1, 3, dtype=m.dtype, device=m.device)
    bottom[..., 0, 2] = 1
    return torch.cat([m, bottom], dim=-2)


def _normalized_theta(m: torch.Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """``affine_grid`` theta (align_corners=False) for pixel matrices ``m`` mapping input -> output pixels."""
    (h_in, w_in), (h_out, w_out) = in_hw, out_hw
    dev = m.device
    # normalized -> pixel for the output grid: x = (w/2) xn + (w-1)/2
    out_n2p = torch.tensor([[w_out / 2, 0, (w_out - 1) / 2], [0, h_out / 2, (h_out - 1) / 2], [0, 0, 1]],
                           dtype=torch.float64, device=dev)
    # pixel -> normalized for the input: xn = (2x + 1)/W - 1
    in_p2n = torch.tensor([[2 / w_in, 0, 1 / w_in - 1], [0, 2 / h_in, 1 / h_in - 1], [0, 0, 1]],
                          dtype=torch.float64, device=dev)
    inv = _to3(invert_affine(m.to(torch.float64)))
    return (in_p2n @ inv @ out_n2p)[..., :2, :]


def warp_affine(images: torch.Tensor, matrices: torch.Tensor, out_size: tuple[int, int] | int,
                image_index: torch.Tensor | Sequence[int] | None = None, mode: str = "bilinear",
                padding_mode: str = "reflection") -> torch.Tensor:
    """Warp images with pixel-coordinate affine matrices using ``grid_sample`` on the tensor's device.

    Args:
        images: ``(B, C, H, W)`` float.
        matrices: ``(N, 2, 3)`` mapping image pixel coords -> output pixel coords (OpenCV ``warpAffine`` style).
        out_size: ``(h, w)`` or one int for a square output.
        image_index: ``(N,)`` which image each matrix samples from (default: ``arange(N)``, N == B). Pass it as
            a host list / array / CPU tensor: a GPU tensor is read back to the host (one sync per call).
        mode: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        padding_mode: ``"reflection"`` (default for aligned crops, our choice: no black wedges at the crop
            edge), ``"border"`` or ``"zeros"``.

    Returns:
        ``(N, C, h, w)``.
    """
    h_out, w_out = (out_size, out_size) if isinstance(out_size, int) else (int(out_size[0]), int(out_size[1]))
    matrices = torch.as_tensor(matrices, device=images.device)
    n = matrices.shape[0]
    index = np.arange(n) if image_index is None else np.asarray(
        image_index.tolist() if torch.is_tensor(image_index) else image_index, dtype=np.int64).reshape(-1)
    if n != len(index):
        raise HonestFaceError("warp", f"{n} matrices but {len(index)} image indices", "Pass one index per matrix")
    out = images.new_empty((n, images.shape[1], h_out, w_out))
    if n == 0:
        return out
    theta = _normalized_theta(matrices, tuple(images.shape[-2:]), (h_out, w_out)).to(images.dtype)
    grid = F.affine_grid(theta, [n, 1, h_out, w_out], align_corners=False)
    # sample each source image once for all its faces: stack the faces' grids vertically (no image copies)
    for b in np.unique(index).tolist():
        sel = np.flatnonzero(index == b)
        sel_t = slice(None) if len(sel) == n else torch.as_tensor(sel, device=images.device)
        g = grid[sel_t].reshape(1, len(sel) * h_out, w_out, 2)
        res = F.grid_sample(images[b:b + 1], g, mode=mode, padding_mode=padding_mode, align_corners=False)
        out[sel_t] = res.reshape(images.shape[1], len(sel), h_out, w_out).transpose(0, 1)
    return out


def uses_opencv(t: torch.Tensor) -> bool:
    """Whether warps of ``t`` run on OpenCV: CPU float32 tensors (their numpy views, no copies; ``cv2.warpAffine``
    is 10-30x faster than ``grid_sample`` on CPU). Other devices and dtypes use ``grid_sample`` on the device.

    Both use the same bicubic kernel (Keys, a = -0.75) and pixel convention; OpenCV rounds sample positions to
    1/32 pixel. Our choice, measured in docs/restore.md (performance)."""
    return t.device.type == "cpu" and t.dtype == torch.float32


PADDING_MODES = {"reflection": "BORDER_REFLECT", "border": "BORDER_REPLICATE", "zeros": "BORDER_CONSTANT"}


def warp_affine_opencv(src: np.ndarray, m: np.ndarray, out_hw: tuple[int, int], padding_mode: str = "zeros",
                       dst: np.ndarray | None = None) -> np.ndarray:
    """``cv2.warpAffine`` with bicubic sampling of an ``(H, W, C)`` float32 array (C <= 4) into ``out_hw``;
    ``padding_mode`` as :func:`warp_affine` (``"zeros"`` pads with 0). Writes into ``dst`` when given."""
    import cv2

    border = getattr(cv2, PADDING_MODES[padding_mode])
    return cv2.warpAffine(src, np.asarray(m, np.float64), (int(out_hw[1]), int(out_hw[0])), dst=dst,
                          flags=cv2.INTER_CUBIC, borderMode=border, borderValue=0)


def shrink_opencv(src: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Antialiased shrink of an ``(H, W, C)`` float32 array with OpenCV's pixel-area resampling."""
    import cv2

    return cv2.resize(src, (int(out_hw[1]), int(out_hw[0])), interpolation=cv2.INTER_AREA)


def shrink_torch(src: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear shrink of ``(N, C, H, W)`` on its device."""
    return F.interpolate(src, size=tuple(int(v) for v in out_hw), mode="bilinear", antialias=True, align_corners=False)


def resize_matrix(sx: float, sy: float, x0: float = 0.0, y0: float = 0.0) -> np.ndarray:
    """``(3, 3)`` map from pixels of an image to pixels of its ``[x0:, y0:]`` region resized by ``(sx, sy)``
    (pixel centres: ``x' = sx (x - x0 + 0.5) - 0.5``)."""
    return np.array([[sx, 0, sx * (0.5 - x0) - 0.5], [0, sy, sy * (0.5 - y0) - 0.5], [0, 0, 1]])


def affine_scale(m: np.ndarray) -> np.ndarray:
    """Linear scale ``sqrt(|det|)`` of ``(..., 2, 3)`` affine matrices."""
    return np.sqrt(np.abs(m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]))


def shrink_plan(m: np.ndarray, size: int, factor: float, hw: tuple[int, int]) -> tuple[int, int, int, int, int, int, np.ndarray]:
    """Where to cut the crop's footprint out of an ``hw`` image and how far to shrink it (by ``factor``).

    Returns ``x0, y0, x1, y1`` (the region), ``hs, ws`` (its shrunk size) and the matrix from shrunk-region
    pixels to crop pixels. Large faces otherwise alias when bicubic sampling skips source pixels (our choice:
    shrink to 2x the crop scale, then sample).
    """
    h, w = int(hw[0]), int(hw[1])
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
    foot = corners @ invert_affine(m).T
    pad = 4.0 / factor
    x0, y0 = (max(0, int(np.floor(foot[:, k].min() - pad))) for k in (0, 1))
    x1, y1 = min(w, int(np.ceil(foot[:, 0].max() + pad)) + 1), min(h, int(np.ceil(foot[:, 1].max() + pad)) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:  # footprint outside the image: sample the whole image
        x0, y0, x1, y1 = 0, 0, w, h
    hs, ws = max(2, round((y1 - y0) * factor)), max(2, round((x1 - x0) * factor))
    to_shrunk = resize_matrix(ws / (x1 - x0), hs / (y1 - y0), x0, y0)
    return x0, y0, x1, y1, hs, ws, (np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(to_shrunk))[:2]


@lru_cache(maxsize=16)
def ffhq_to_arcface(size: int, arcface_size: int = 112) -> np.ndarray:
    """``(2, 3)`` map from a ``size`` FFHQ crop's pixels to the ArcFace template at ``arcface_size`` pixels."""
    return estimate_similarity(template_for_size(size), ARCFACE_TEMPLATE_112 * (arcface_size / 112.0))


def warp_antialiased(images: torch.Tensor, m: np.ndarray, size: int, mode: str = "bilinear",
                     padding_mode: str = "reflection") -> torch.Tensor:
    """Warp every ``(N, C, H, W)`` image with the same host matrix ``m`` to ``(N, C, size, size)``.

    When ``m`` shrinks by more than 2x, the footprint is first cut out and shrunk with antialiasing to twice the
    output scale (our choice), so sampling skips no source pixels. Differentiable; runs on the images' device.
    """
    m = np.asarray(m, np.float64)
    scale = float(affine_scale(m))
    if scale < 0.5:
        x0, y0, x1, y1, hs, ws, m = shrink_plan(m, size, 2.0 * scale, tuple(images.shape[-2:]))
        images = shrink_torch(images[..., y0:y1, x0:x1], (hs, ws))
    mats = torch.as_tensor(m, dtype=torch.float32, device=images.device).expand(images.shape[0], 2, 3)
    return warp_affine(images, mats, size, mode=mode, padding_mode=padding_mode)
