"""Paste restored face crops back into their images (inverse warp + soft mask) with optional colour correction.

Everything runs in torch on the images' device; the inputs are never modified.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from honestface_core.geometry import affine_scale, invert_affine, resize_matrix, shrink_opencv, shrink_torch, uses_opencv, warp_affine, warp_affine_opencv
from honestface_core.errors import HonestFaceError
from honestface_core.face.parsing import feathered_mask

COLOR_CORRECTIONS = ("none", "adain", "wavelet")


def adain_color(crops: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Match each crop's per-channel mean and std to the reference's. ``(N, S, S, 3)`` -> same."""
    dims = (1, 2)
    mu_c, sd_c = crops.mean(dims, keepdim=True), crops.std(dims, keepdim=True)
    mu_r, sd_r = reference.mean(dims, keepdim=True), reference.std(dims, keepdim=True)
    return ((crops - mu_c) / (sd_c + eps) * sd_r + mu_r).clamp(0, 1)


def _wavelet_low(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Low-frequency part of ``(N, C, H, W)``: ``levels`` à-trous passes of a 3x3 binomial kernel, dilation 2^i."""
    c = x.shape[1]
    k1 = torch.tensor([1.0, 2.0, 1.0], device=x.device, dtype=x.dtype) / 4
    kernel = (k1[:, None] * k1[None, :]).expand(c, 1, 3, 3)
    for i in range(levels):
        d = 2 ** i
        if d >= min(x.shape[-2:]):
            break
        x = F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), kernel, groups=c, dilation=d)
    return x


def wavelet_color(crops: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """Keep the crops' high frequencies and take the low frequencies (colour, shading) from the reference.

    À-trous wavelet split with ``levels`` scales (our choice: 5, i.e. structures above ~32 px at 512 come from
    the reference). ``(N, S, S, 3)`` -> same.
    """
    x, r = crops.permute(0, 3, 1, 2), reference.permute(0, 3, 1, 2)
    out = x - _wavelet_low(x, levels) + _wavelet_low(r, levels)
    return out.permute(0, 2, 3, 1).clamp(0, 1)


def color_correct(crops: torch.Tensor, reference: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Apply ``"none"``, ``"adain"`` or ``"wavelet"`` colour correction of ``crops`` toward ``reference``."""
    if mode not in COLOR_CORRECTIONS:
        raise HonestFaceError("color correction", f"'{mode}' is unknown", f"Use one of {', '.join(COLOR_CORRECTIONS)}")
    if mode == "none":
        return crops
    if reference is None or reference.shape != crops.shape:
        raise HonestFaceError("color correction", f"'{mode}' needs reference crops of the same shape as the restored crops "
                              f"({tuple(crops.shape)}), got {None if reference is None else tuple(reference.shape)}",
                              "Pass the original aligned crops as reference, or use 'none'")
    reference = reference.to(crops.device, crops.dtype)
    return adain_color(crops, reference) if mode == "adain" else wavelet_color(crops, reference)


@functools.lru_cache(maxsize=8)
def default_mask(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The :func:`feathered_mask` ``(S, S)`` paste-back mask, built once per size, device and dtype (shared: do
    not modify it)."""
    return feathered_mask(size, 1, device, dtype=dtype)[0]


@dataclass(frozen=True)
class _Window:
    """Where one crop lands: image ``b``, window ``[y0:y1, x0:x1]``, the side the crop is first shrunk to
    (0 = not shrunk) and the ``(2, 3)`` map from (shrunk) crop pixels to window pixels."""

    b: int
    x0: int
    y0: int
    x1: int
    y1: int
    shrink: int
    m: np.ndarray


def _windows(inv: np.ndarray, index: list[int], s: int, h: int, w: int) -> list[_Window]:
    """Host-side plan of every crop's paste window (crops wholly outside their image are left out).

    Sampling is bicubic (our choice, sharper round trip); a crop more than twice the face's size in the image
    is first shrunk with antialiasing to 2x the target scale so restored detail does not alias."""
    corners = np.array([[-0.5, -0.5, 1], [s - 0.5, -0.5, 1], [-0.5, s - 0.5, 1], [s - 0.5, s - 0.5, 1]])
    plans = []
    for inv_i, b, scale in zip(inv, index, affine_scale(inv)):
        foot = corners @ inv_i.T
        x0, y0 = max(0, math.floor(foot[:, 0].min())), max(0, math.floor(foot[:, 1].min()))
        x1, y1 = min(w, math.ceil(foot[:, 0].max()) + 1), min(h, math.ceil(foot[:, 1].max()) + 1)
        if x1 <= x0 or y1 <= y0:
            plans.append(None)
            continue
        m = np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1]]) @ np.vstack([inv_i, [0, 0, 1]])
        shrink = max(2, round(s * scale * 2.0)) if scale < 0.5 else 0
        if shrink:
            m = m @ np.linalg.inv(resize_matrix(shrink / s, shrink / s))
        plans.append(_Window(b, x0, y0, x1, y1, shrink, m[:2]))
    return plans


@dataclass
class PastedFaces:
    """:func:`paste_faces`' result: the composited images and, per pixel, how much of it the faces replaced."""

    images: torch.Tensor  # (B, H, W, 3)
    mask: torch.Tensor  # (B, H, W) in [0, 1]: 0 = the input pixel unchanged, 1 = wholly from the faces


def paste_faces(images: torch.Tensor, crops: torch.Tensor, matrices: torch.Tensor, image_index: torch.Tensor,
                masks: torch.Tensor | None = None, color_correction: str = "none",
                reference_crops: torch.Tensor | None = None, strength: float = 1.0) -> PastedFaces:
    """:func:`paste_back`, also returning the mask of the pasted faces (the blend weight each pixel got)."""
    mask = torch.zeros(images.shape[:3], device=images.device, dtype=images.dtype)
    return PastedFaces(_composite(images, crops, matrices, image_index, masks, color_correction, reference_crops,
                                  strength, mask), mask)


def paste_back(images: torch.Tensor, crops: torch.Tensor, matrices: torch.Tensor, image_index: torch.Tensor,
               masks: torch.Tensor | None = None, color_correction: str = "none",
               reference_crops: torch.Tensor | None = None, strength: float = 1.0) -> torch.Tensor:
    """Composite face crops back into their images.

    Args:
        images: ``(B, H, W, 3)`` float [0, 1].
        crops: ``(N, S, S, 3)`` restored crops.
        matrices: ``(N, 2, 3)`` image pixels -> crop pixels (as from :func:`~honestface_core.face.alignment.align_faces`).
        image_index: ``(N,)`` the image each crop belongs to (any number of faces per image).
        masks: ``(N, S, S)`` soft masks in [0, 1] (crop space); default :func:`default_mask` for every crop.
        color_correction: ``"none"``, ``"adain"`` or ``"wavelet"``, toward ``reference_crops``.
        reference_crops: ``(N, S, S, 3)`` the original aligned crops (needed by colour correction).
        strength: 0..1, how much of each restored face replaces the input: the blend weight (the warped mask)
            is scaled by it, so 0 returns the input unchanged and 1 the restored faces.

    Returns:
        New ``(B, H, W, 3)`` tensor; faces are composited in order (a later face overlaps an earlier one).
        Pixels where every mask is 0 are copied unchanged.

    Matrices and indices are read back to the host once per call (never per face); each crop is warped only
    over its own window of the image. CPU float32 images use OpenCV (:func:`~honestface_core.geometry.uses_opencv`),
    other devices ``grid_sample``.
    """
    return _composite(images, crops, matrices, image_index, masks, color_correction, reference_crops, strength, None)


def _composite(images: torch.Tensor, crops: torch.Tensor, matrices: torch.Tensor, image_index: torch.Tensor,
               masks: torch.Tensor | None, color_correction: str, reference_crops: torch.Tensor | None,
               strength: float, coverage: torch.Tensor | None) -> torch.Tensor:
    """:func:`paste_back`; accumulates the composite's alpha into ``coverage`` ``(B, H, W)`` when given."""
    if images.dim() != 4 or crops.dim() != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise HonestFaceError("paste back", f"expected images (B,H,W,3) and crops (N,S,S,3), got {tuple(images.shape)} and "
                              f"{tuple(crops.shape)}", "Pass IMAGE tensors and aligned crops")
    if not 0.0 <= float(strength) <= 1.0:
        raise HonestFaceError("strength", f"{strength} is outside 0..1", "Use 0 (input unchanged) to 1 (restored faces)")
    n, s = crops.shape[0], crops.shape[1]
    if matrices.shape[0] != n or len(image_index) != n:
        raise HonestFaceError("paste back", f"{n} crops but {matrices.shape[0]} matrices and {len(image_index)} image indices",
                              "Pass the matrices and image_index that came with the crops")
    cv = uses_opencv(images)
    out = torch.from_numpy(images.detach().numpy().copy()) if cv else images.detach().clone(memory_format=torch.contiguous_format)
    if n == 0 or float(strength) == 0.0:
        return out
    dev, dtype = images.device, images.dtype
    crops = color_correct(crops.to(dev, dtype), reference_crops, color_correction)
    masks = default_mask(s, dev, dtype).expand(n, s, s) if masks is None else masks.to(dev, dtype)
    if masks.shape != (n, s, s):
        raise HonestFaceError("paste back masks", f"expected shape {(n, s, s)}, got {tuple(masks.shape)}", "Pass one (S, S) mask per crop")
    b_count, h, w = images.shape[:3]
    index = torch.as_tensor(image_index).tolist()
    bad = [i for i, b in enumerate(index) if not 0 <= b < b_count]
    if bad:
        raise HonestFaceError("paste back", f"crop {bad[0]} refers to image {index[bad[0]]} but the batch has {b_count}",
                              "Pass the matching image_index")
    inv = invert_affine(torch.as_tensor(matrices).detach().cpu().numpy().astype(np.float64))  # crop -> image pixels
    paste = _paste_opencv if cv else _paste_torch
    paste(out, crops, masks, _windows(inv, index, s, h, w), float(strength), coverage)
    return out


def _paste_opencv(out: torch.Tensor, crops: torch.Tensor, masks: torch.Tensor, windows: list[_Window | None],
                  strength: float, coverage: torch.Tensor | None) -> None:
    """Composite on CPU float32 through numpy views of ``out`` (in place, no copies of the image); crop and mask
    are warped separately (no RGBA copy per face)."""
    out_np, crops_np, masks_np = out.numpy(), crops.detach().contiguous().numpy(), masks.detach().numpy()
    cov_np = None if coverage is None else coverage.numpy()
    for i, win in enumerate(windows):
        if win is None:
            continue
        hw = (win.y1 - win.y0, win.x1 - win.x0)
        face, mask = crops_np[i], np.ascontiguousarray(masks_np[i])
        if win.shrink:
            face, mask = shrink_opencv(face, (win.shrink, win.shrink)), shrink_opencv(mask, (win.shrink, win.shrink))
        face, alpha = warp_affine_opencv(face, win.m, hw, "zeros"), np.clip(warp_affine_opencv(mask, win.m, hw, "zeros"), 0, 1)
        if strength != 1.0:
            alpha *= strength
        region = out_np[win.b, win.y0:win.y1, win.x0:win.x1]
        region += alpha[..., None] * (face - region)
        if cov_np is not None:
            cov = cov_np[win.b, win.y0:win.y1, win.x0:win.x1]
            cov += alpha * (1 - cov)


def _paste_torch(out: torch.Tensor, crops: torch.Tensor, masks: torch.Tensor, windows: list[_Window | None],
                 strength: float, coverage: torch.Tensor | None) -> None:
    """Composite with ``grid_sample`` on ``out``'s device; every window and matrix comes from the host plan,
    so the loop queues work without waiting for the device."""
    chw = torch.cat([crops, masks[..., None]], dim=-1).permute(0, 3, 1, 2)
    for i, win in enumerate(windows):
        if win is None:
            continue
        src = shrink_torch(chw[i:i + 1], (win.shrink, win.shrink)) if win.shrink else chw[i:i + 1]
        warped = warp_affine(src, torch.from_numpy(win.m)[None], (win.y1 - win.y0, win.x1 - win.x0),
                             mode="bicubic", padding_mode="zeros")[0].permute(1, 2, 0)
        alpha = warped[..., 3:].clamp(0, 1) * strength
        region = out[win.b, win.y0:win.y1, win.x0:win.x1]
        region += alpha * (warped[..., :3] - region)
        if coverage is not None:
            cov = coverage[win.b, win.y0:win.y1, win.x0:win.x1]
            cov += alpha[..., 0] * (1 - cov)
