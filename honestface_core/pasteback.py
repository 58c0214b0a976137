"""Paste restored face crops back into their images (inverse warp + soft mask) with optional colour correction.

Everything runs in torch on the images' device; the inputs are never modified.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .alignment import invert_affine, warp_affine
from .errors import HonestFaceError
from .parsing import feathered_mask

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


def paste_back(images: torch.Tensor, crops: torch.Tensor, matrices: torch.Tensor, image_index: torch.Tensor,
               masks: torch.Tensor | None = None, color_correction: str = "none",
               reference_crops: torch.Tensor | None = None) -> torch.Tensor:
    """Composite face crops back into their images.

    Args:
        images: ``(B, H, W, 3)`` float [0, 1].
        crops: ``(N, S, S, 3)`` restored crops.
        matrices: ``(N, 2, 3)`` image pixels -> crop pixels (as from :func:`~honestface_core.alignment.align_faces`).
        image_index: ``(N,)`` the image each crop belongs to (any number of faces per image).
        masks: ``(N, S, S)`` soft masks in [0, 1] (crop space); default :func:`feathered_mask`.
        color_correction: ``"none"``, ``"adain"`` or ``"wavelet"``, toward ``reference_crops``.
        reference_crops: ``(N, S, S, 3)`` the original aligned crops (needed by colour correction).

    Returns:
        New ``(B, H, W, 3)`` tensor; faces are composited in order (a later face overlaps an earlier one).
        Pixels where every mask is 0 are copied unchanged.
    """
    if images.dim() != 4 or crops.dim() != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        raise HonestFaceError("paste back", f"expected images (B,H,W,3) and crops (N,S,S,3), got {tuple(images.shape)} and "
                              f"{tuple(crops.shape)}", "Pass IMAGE tensors and aligned crops")
    n, s = crops.shape[0], crops.shape[1]
    if matrices.shape[0] != n or len(image_index) != n:
        raise HonestFaceError("paste back", f"{n} crops but {matrices.shape[0]} matrices and {len(image_index)} image indices",
                              "Pass the matrices and image_index that came with the crops")
    out = images.clone()
    if n == 0:
        return out
    dev, dtype = images.device, images.dtype
    crops = color_correct(crops.to(dev, dtype), reference_crops, color_correction)
    masks = feathered_mask(s, n, dev, dtype=dtype) if masks is None else masks.to(dev, dtype)
    if masks.shape != (n, s, s):
        raise HonestFaceError("paste back masks", f"expected shape {(n, s, s)}, got {tuple(masks.shape)}", "Pass one (S, S) mask per crop")
    b_count, h, w = images.shape[:3]
    inv = invert_affine(torch.as_tensor(matrices).to(torch.float64).cpu()).numpy()  # crop pixels -> image pixels
    index = torch.as_tensor(image_index).long().cpu().tolist()
    corners = np.array([[-0.5, -0.5, 1], [s - 0.5, -0.5, 1], [-0.5, s - 0.5, 1], [s - 0.5, s - 0.5, 1]])
    rgba = torch.cat([crops.permute(0, 3, 1, 2), masks[:, None]], dim=1)
    for i in range(n):
        b = index[i]
        if not 0 <= b < b_count:
            raise HonestFaceError("paste back", f"crop {i} refers to image {b} but the batch has {b_count}", "Pass the matching image_index")
        foot = corners @ inv[i].T
        x0, y0 = max(0, math.floor(foot[:, 0].min())), max(0, math.floor(foot[:, 1].min()))
        x1, y1 = min(w, math.ceil(foot[:, 0].max()) + 1), min(h, math.ceil(foot[:, 1].max()) + 1)
        if x1 <= x0 or y1 <= y0:
            continue  # the crop lies entirely outside its image
        # crop pixels -> window pixels; sample the crop at every window pixel
        m = torch.from_numpy(np.vstack([inv[i], [0, 0, 1]]))
        m = (torch.tensor([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1]], dtype=torch.float64) @ m)[:2]
        # bicubic sampling (our choice, sharper round trip); a crop more than twice the face's size in the image
        # is first shrunk with antialiasing to 2x the target scale so restored detail does not alias
        src = rgba[i:i + 1]
        scale = math.sqrt(abs(np.linalg.det(inv[i][:, :2])))
        if scale < 0.5:
            size = max(2, round(s * scale * 2.0))
            src = F.interpolate(src, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            f = size / s
            m = m @ torch.tensor([[1 / f, 0, 0.5 / f - 0.5], [0, 1 / f, 0.5 / f - 0.5], [0, 0, 1]], dtype=torch.float64)
        warped = warp_affine(src, m[None], (y1 - y0, x1 - x0), mode="bicubic", padding_mode="zeros")[0]
        face, alpha = warped[:3].permute(1, 2, 0), warped[3:].permute(1, 2, 0).clamp(0, 1)
        region = out[b, y0:y1, x0:x1]
        out[b, y0:y1, x0:x1] = region + alpha * (face - region)
    return out
