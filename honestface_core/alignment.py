"""Five-point face alignment: templates, similarity fit, exact inverse, and a torch warp on the tensor's device.

Pixel convention everywhere (as OpenCV): pixel ``(x, y)`` has its centre at integer coordinates, the image
spans ``[-0.5, W - 0.5]``. Matrices are ``(2, 3)`` and map source pixel coordinates to destination pixel
coordinates: ``dst = M[:, :2] @ src + M[:, 2]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .detection import DetectedFace
from .errors import HonestFaceError

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
    """Exact inverse of ``(..., 2, 3)`` affine matrices (numpy or torch, any batch shape)."""
    a, b = m[..., :2], m[..., 2:]
    if isinstance(m, torch.Tensor):
        a_inv = torch.linalg.inv(a)
        return torch.cat([a_inv, -a_inv @ b], dim=-1)
    a_inv = np.linalg.inv(a)
    return np.concatenate([a_inv, -a_inv @ b], axis=-1)


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
    inv = torch.linalg.inv(_to3(m.to(torch.float64)))
    return (in_p2n @ inv @ out_n2p)[..., :2, :]


def warp_affine(images: torch.Tensor, matrices: torch.Tensor, out_size: tuple[int, int] | int,
                image_index: torch.Tensor | None = None, mode: str = "bilinear",
                padding_mode: str = "reflection") -> torch.Tensor:
    """Warp images with pixel-coordinate affine matrices using ``grid_sample`` on the tensor's device.

    Args:
        images: ``(B, C, H, W)`` float.
        matrices: ``(N, 2, 3)`` mapping image pixel coords -> output pixel coords (OpenCV ``warpAffine`` style).
        out_size: ``(h, w)`` or one int for a square output.
        image_index: ``(N,)`` long, which image each matrix samples from (default: ``arange(N)``, N == B).
        mode: ``"bilinear"`` or ``"nearest"``.
        padding_mode: ``"reflection"`` (default for aligned crops, our choice: no black wedges at the crop
            edge), ``"border"`` or ``"zeros"``.

    Returns:
        ``(N, C, h, w)``.
    """
    h_out, w_out = (out_size, out_size) if isinstance(out_size, int) else (int(out_size[0]), int(out_size[1]))
    matrices = torch.as_tensor(matrices).to(images.device)
    n = matrices.shape[0]
    if image_index is None:
        image_index = torch.arange(n, device=images.device)
    image_index = torch.as_tensor(image_index, device=images.device).long()
    if n != image_index.shape[0]:
        raise HonestFaceError("warp", f"{n} matrices but {image_index.shape[0]} image indices", "Pass one index per matrix")
    out = images.new_empty((n, images.shape[1], h_out, w_out))
    if n == 0:
        return out
    theta = _normalized_theta(matrices, tuple(images.shape[-2:]), (h_out, w_out)).to(images.dtype)
    grid = F.affine_grid(theta, [n, 1, h_out, w_out], align_corners=False)
    # sample each source image once for all its faces: stack the faces' grids vertically (no image copies)
    for b in torch.unique(image_index).tolist():
        sel = (image_index == b).nonzero().flatten()
        g = grid[sel].reshape(1, len(sel) * h_out, w_out, 2)
        res = F.grid_sample(images[b:b + 1], g, mode=mode, padding_mode=padding_mode, align_corners=False)
        out[sel] = res.reshape(images.shape[1], len(sel), h_out, w_out).transpose(0, 1)
    return out


def check_aligned_crops(crops: torch.Tensor, min_size: int = 1, size_advice: str = "") -> torch.Tensor:
    """Check that ``crops`` are aligned face crops (N, S, S, 3) with S >= ``min_size``; return them unchanged.

    ``size_advice`` tells the user which crop size to align at when the crops are too small.
    """
    if not torch.is_tensor(crops) or crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        got = tuple(crops.shape) if torch.is_tensor(crops) else type(crops).__name__
        raise HonestFaceError("face crops", f"expected square aligned crops of shape (N, S, S, 3), got {got}",
                              "Pass the crops from face detection / alignment (HonestFace Detect Faces / align_faces)")
    if crops.shape[1] < min_size:
        raise HonestFaceError("face crops", f"crops are only {crops.shape[1]} pixels wide", size_advice)
    return crops


@dataclass
class AlignedFaces:
    """Aligned face crops with everything needed to paste them back.

    Attributes:
        crops: ``(N, S, S, 3)`` float [0, 1].
        matrices: ``(N, 2, 3)`` float32, image pixels -> crop pixels.
        image_index: ``(N,)`` long, the batch image each face came from.
        faces: the detections, in the same order.
        size: crop side S.
    """

    crops: torch.Tensor
    matrices: torch.Tensor
    image_index: torch.Tensor
    faces: list[DetectedFace] = field(default_factory=list)
    size: int = 512

    def __len__(self) -> int:
        return int(self.crops.shape[0])


def align_faces(images: torch.Tensor, faces: list[DetectedFace], size: int = 512,
                padding_mode: str = "reflection") -> AlignedFaces:
    """Warp every detected face to the FFHQ template at ``size`` x ``size`` (on the images' device).

    ``images`` is ``(B, H, W, 3)``; each face's ``image_index`` picks its source image. Sampling is bicubic
    (our choice: sharper than bilinear, and an align + paste-back round trip stays within ~1 grey level on
    average). When the face is more than twice the crop size, its region is first shrunk with antialiasing
    so the crop does not alias (our choice).
    """
    from .images import as_rgb_batch

    images = as_rgb_batch(images, "images")
    dev = images.device
    template = template_for_size(size)
    mats = np.stack([estimate_similarity(f.kps, template) for f in faces]) if faces else np.zeros((0, 2, 3))
    for f in faces:
        if not 0 <= f.image_index < images.shape[0]:
            raise HonestFaceError("faces", f"face refers to image {f.image_index} but the batch has {images.shape[0]} images",
                                  "Detect faces on the same image batch you align")
    index = torch.tensor([f.image_index for f in faces], dtype=torch.long, device=dev)
    matrices = torch.from_numpy(mats).to(dev, torch.float32)
    chw = images.permute(0, 3, 1, 2)
    crops = images.new_empty((len(faces), 3, size, size))
    scales = np.sqrt(np.abs(np.linalg.det(mats[:, :, :2]))) if faces else np.zeros(0)
    direct = np.flatnonzero(scales >= 0.5)
    if len(direct):
        sel = torch.from_numpy(direct).to(dev)
        crops[sel] = warp_affine(chw, matrices[sel], size, index[sel], mode="bicubic", padding_mode=padding_mode)
    for i in np.flatnonzero(scales < 0.5).tolist():
        src, m = _shrunk_source(chw[faces[i].image_index], mats[i], size, 2.0 * float(scales[i]))
        crops[i] = warp_affine(src[None], torch.from_numpy(m)[None].to(dev), size, mode="bicubic", padding_mode=padding_mode)[0]
    return AlignedFaces(crops.permute(0, 2, 3, 1).clamp(0, 1), matrices, index, list(faces), int(size))


def _shrunk_source(img: torch.Tensor, m: np.ndarray, size: int, factor: float) -> tuple[torch.Tensor, np.ndarray]:
    """Cut the crop's footprint out of ``img`` (C, H, W) and shrink it by ``factor`` with antialiasing.

    Returns the shrunk region and the matrix from its pixels to crop pixels. Large faces otherwise alias when
    bicubic sampling skips source pixels (our choice: shrink to 2x the crop scale, then sample).
    """
    h, w = img.shape[-2:]
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
    foot = corners @ invert_affine(m).T
    pad = 4.0 / factor
    x0, y0 = (max(0, int(np.floor(foot[:, k].min() - pad))) for k in (0, 1))
    x1, y1 = min(w, int(np.ceil(foot[:, 0].max() + pad)) + 1), min(h, int(np.ceil(foot[:, 1].max() + pad)) + 1)
    if x1 - x0 < 2 or y1 - y0 < 2:  # footprint outside the image: sample the whole image
        x0, y0, x1, y1 = 0, 0, w, h
    region = img[:, y0:y1, x0:x1]
    hs, ws = max(2, round((y1 - y0) * factor)), max(2, round((x1 - x0) * factor))
    region = F.interpolate(region[None], size=(hs, ws), mode="bilinear", antialias=True, align_corners=False)[0]
    sx, sy = ws / (x1 - x0), hs / (y1 - y0)
    # region pixel -> shrunk pixel: x' = sx (x + 0.5) - 0.5; image pixel -> region pixel: x - x0
    to_shrunk = np.array([[sx, 0, sx * (0.5 - x0) - 0.5], [0, sy, sy * (0.5 - y0) - 0.5], [0, 0, 1]])
    m_new = (np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(to_shrunk))[:2]
    return region, m_new
