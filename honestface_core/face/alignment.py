"""Five-point face alignment: templates, similarity fit, exact inverse, and a torch warp on the tensor's device.

Pixel convention everywhere (as OpenCV): pixel ``(x, y)`` has its centre at integer coordinates, the image
spans ``[-0.5, W - 0.5]``. Matrices are ``(2, 3)`` and map source pixel coordinates to destination pixel
coordinates: ``dst = M[:, :2] @ src + M[:, 2]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from honestface_core.face.detection import DetectedFace
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


def uses_opencv(t: torch.Tensor) -> bool:
    """Whether warps of ``t`` run on OpenCV: CPU float32 tensors (their numpy views, no copies; ``cv2.warpAffine``
    is 10-30x faster than ``grid_sample`` on CPU). Other devices and dtypes use ``grid_sample`` on the device.

    Both use the same bicubic kernel (Keys, a = -0.75) and pixel convention; OpenCV rounds sample positions to
    1/32 pixel. Our choice, measured in docs/restore.md (performance)."""
    return t.device.type == "cpu" and t.dtype == torch.float32


_CV2_BORDERS = {"reflection": "BORDER_REFLECT", "border": "BORDER_REPLICATE", "zeros": "BORDER_CONSTANT"}


def warp_affine_opencv(src: np.ndarray, m: np.ndarray, out_hw: tuple[int, int], padding_mode: str = "zeros",
                       dst: np.ndarray | None = None) -> np.ndarray:
    """``cv2.warpAffine`` with bicubic sampling of an ``(H, W, C)`` float32 array (C <= 4) into ``out_hw``;
    ``padding_mode`` as :func:`warp_affine` (``"zeros"`` pads with 0). Writes into ``dst`` when given."""
    import cv2

    border = getattr(cv2, _CV2_BORDERS[padding_mode])
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


def align_faces(images: torch.Tensor, faces: list[DetectedFace], size: int = 512,
                padding_mode: str = "reflection") -> AlignedFaces:
    """Warp every detected face to the FFHQ template at ``size`` x ``size`` (on the images' device).

    ``images`` is ``(B, H, W, 3)``; each face's ``image_index`` picks its source image. Sampling is bicubic
    (our choice: sharper than bilinear, and an align + paste-back round trip stays within ~1 grey level on
    average). When the face is more than twice the crop size, its region is first shrunk with antialiasing
    so the crop does not alias (our choice). Matrices are fitted on the host from the detections; on a GPU
    the faces of each image are sampled in one ``grid_sample`` call with no read-back to the host; CPU
    float32 images are warped with OpenCV (:func:`uses_opencv`).
    """
    from honestface_core.files.images import as_rgb_batch

    images = as_rgb_batch(images, "images")
    if padding_mode not in _CV2_BORDERS:
        raise HonestFaceError("padding mode", f"'{padding_mode}' is unknown", f"Use one of {', '.join(_CV2_BORDERS)}")
    for f in faces:
        if not 0 <= f.image_index < images.shape[0]:
            raise HonestFaceError("faces", f"face refers to image {f.image_index} but the batch has {images.shape[0]} images",
                                  "Detect faces on the same image batch you align")
    dev = images.device
    template = template_for_size(size)
    mats = np.stack([estimate_similarity(f.kps, template) for f in faces]) if faces else np.zeros((0, 2, 3))
    index = np.array([f.image_index for f in faces], dtype=np.int64)
    crops = images.new_empty((len(faces), size, size, 3))
    align = _align_opencv if uses_opencv(images) else _align_torch
    align(images, mats, index, crops, padding_mode)
    return AlignedFaces(crops, torch.from_numpy(mats).to(dev, torch.float32),
                        torch.from_numpy(index).to(dev), list(faces), int(size))


def _align_opencv(images: torch.Tensor, mats: np.ndarray, index: np.ndarray, crops: torch.Tensor, padding_mode: str) -> None:
    """Fill ``crops`` (N, S, S, 3) from CPU float32 ``images`` with OpenCV, writing straight into their memory.
    Everything here is single-threaded numpy / OpenCV work: torch's OpenMP threads cost 2-6x on these small
    element-wise steps when other processes share the cores (measured, docs/restore.md)."""
    size, images = crops.shape[1], images.detach().contiguous()
    for i, (m, b, scale) in enumerate(zip(mats, index.tolist(), affine_scale(mats))):
        src = images[b].numpy()
        if scale < 0.5:
            x0, y0, x1, y1, hs, ws, m = _shrink_plan(m, size, 2.0 * float(scale), src.shape[:2])
            src = shrink_opencv(src[y0:y1, x0:x1], (hs, ws))
        dst = crops[i].numpy()
        np.clip(warp_affine_opencv(src, m, (size, size), padding_mode, dst=dst), 0, 1, out=dst)


def _align_torch(images: torch.Tensor, mats: np.ndarray, index: np.ndarray, crops: torch.Tensor, padding_mode: str) -> None:
    """Fill ``crops`` with ``grid_sample`` on the images' device: one call per image for all its faces, the
    few faces larger than twice the crop one by one after an antialiased shrink. No read-back to the host."""
    dev, size = images.device, crops.shape[1]
    chw = images.permute(0, 3, 1, 2)
    scales = affine_scale(mats)
    direct = np.flatnonzero(scales >= 0.5)
    if len(direct):
        sel = torch.as_tensor(direct, device=dev)
        warped = warp_affine(chw, torch.from_numpy(mats[direct]), size, index[direct], mode="bicubic", padding_mode=padding_mode)
        crops[sel] = warped.permute(0, 2, 3, 1)
    for i in np.flatnonzero(scales < 0.5).tolist():
        img = chw[index[i]]
        x0, y0, x1, y1, hs, ws, m = _shrink_plan(mats[i], size, 2.0 * float(scales[i]), img.shape[-2:])
        src = shrink_torch(img[None, :, y0:y1, x0:x1], (hs, ws))
        crops[i] = warp_affine(src, torch.from_numpy(m)[None], size, mode="bicubic", padding_mode=padding_mode)[0].permute(1, 2, 0)
    crops.clamp_(0, 1)


def _shrink_plan(m: np.ndarray, size: int, factor: float, hw: tuple[int, int]) -> tuple[int, int, int, int, int, int, np.ndarray]:
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
