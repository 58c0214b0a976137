"""Faithfulness of a restored face to its input (docs/honesty.md): degrade the restored crop to what the input
shows, compare it with the input crop inside the face mask, and map where the two part.

Our choices (the paper has no such check):

- **Effective input resolution** ``r`` of a face: input-image pixels across its aligned crop, ``S / scale`` of the
  alignment matrix, at most S.
- **Degradation** ``D``: a Gaussian low-pass of the restored crop whose sigma is fitted per face: the one of
  :data:`BLUR_CANDIDATES` (in input pixels, so ``sigma = c * S / r`` crop pixels) that brings the restored face
  closest to the input (smallest masked mean absolute difference of the grey images). An honest restoration of a
  sharp low-resolution input fits about half an input pixel, of a blurred one more; no blur turns another face or
  a moved eye into the input.
  ``D(restored)`` is returned at S too: the identity angle and the landmark drift to the input are measured on it,
  so the gap between a sharp and a blurred photo of the same face does not count (docs/honesty.md).
  The input crop is compared as it is (its own blur is what the fit matches). A Gaussian rather than a downscale
  and upscale: shift-invariant (no dependence on where the input's pixel grid fell in the crop) and one batched
  FFT for all faces of any sizes on the crops' device (reflect padding of an eighth of the side against
  wrap-around). The blur is fitted on the grey (mean RGB) image, one channel per candidate.
  Work is done at ``W = min(S, 2 r)`` rounded up to 32 pixels (antialiased shrink), which keeps every frequency
  the input has.
- **Departure** per pixel: ``|D(restored) - input|`` (mean over RGB) over the face's contrast, the masked mean
  ``|input - its masked mean colour|``, so it reads the same for any exposure or skin tone (1 = as large as the
  face's own contrast). L1, so one region does not dominate the fit as it would in L2.
- **Honesty map**: the departure smoothed over regions (Gaussian sigma = the fitted blur, at least S/64), times the
  mask, at S.
- **Score**: ``input consistency = 1 / (1 + worst)`` where ``worst`` is the mask-weighted mean of the map over its
  worst 5 % (:data:`WORST_FRACTION`) of the face: a local fabrication (a moved eye) shows even when the rest of the
  face matches. 1 = the restored face degrades exactly to the input; 0.5 = its worst region departs by the face's
  whole contrast. SSIM was not used: its fixed 11-pixel window and constants do not follow the input's resolution.
- **Mask**: the caller's face-parsing mask, else :func:`template_face_mask`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from honestface_core.errors import HonestFaceError
from honestface_core.face.parsing import gaussian_blur

BLUR_CANDIDATES = (0.0, 0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0)
"""Gaussian sigmas tried for the input's blur, in input pixels (our choice: none, then half a pixel to 4 in steps
of sqrt 2)."""

WORST_FRACTION = 0.05
"""Share of the face (by mask weight) whose mean departure makes the score (our choice)."""

MIN_REGION_SIGMA = 1.0 / 64.0
"""Smallest smoothing of the honesty map, as a fraction of the crop side (8 pixels at 512; our choice)."""

TEMPLATE_ELLIPSE = (256.0, 300.0, 135.0, 165.0)
"""Face ellipse on the FFHQ 512 template: centre x, y and semi-axes x, y in pixels (our choice: brows to chin,
cheek to cheek, little hair or background)."""


@dataclass
class Consistency:
    """:func:`input_consistency` per face, all on the crops' device: ``score`` (N,) in (0, 1], ``worst`` and
    ``mean`` departures (N,), the fitted input ``blur`` (N,) in input pixels, the honesty ``maps`` (N, S, S) and
    the ``degraded`` restored crops ``D(restored)`` (N, S, S, 3)."""

    score: torch.Tensor
    worst: torch.Tensor
    mean: torch.Tensor
    blur: torch.Tensor
    maps: torch.Tensor
    degraded: torch.Tensor


def input_resolution(matrices: torch.Tensor, size: int) -> torch.Tensor:
    """``(N,)`` effective input resolution of each aligned face: input-image pixels across its ``size`` crop,
    ``size / scale`` of the ``(N, 2, 3)`` image -> crop matrices, at most ``size``. On the matrices' device."""
    m = torch.as_tensor(matrices)
    if m.dim() != 3 or m.shape[1:] != (2, 3):
        raise HonestFaceError("alignment matrices", f"expected (N, 2, 3), got {tuple(m.shape)}",
                              "Pass the matrices of the aligned faces (align_faces / RestoreResult.faces)")
    scale = (m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]).abs().sqrt().float()
    return (size / scale).clamp(max=float(size))


@functools.lru_cache(maxsize=8)
def template_face_mask(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(S, S)`` soft face mask of FFHQ-aligned crops with no parser: :data:`TEMPLATE_ELLIPSE` scaled to S,
    feathered (Gaussian sigma 0.02 S). Built once per size and device (shared: do not modify it)."""
    cx, cy, ax, ay = (v * size / 512.0 for v in TEMPLATE_ELLIPSE)
    t = torch.arange(size, device=device, dtype=torch.float32)
    inside = ((t[None, :] - cx) / ax) ** 2 + ((t[:, None] - cy) / ay) ** 2 <= 1.0
    return gaussian_blur(inside.float()[None, None], 0.02 * size)[0, 0]


def _spectrum(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``rfft2`` of ``(N, C, H, W)`` reflect-padded by an eighth of the side, and the padding."""
    pad = min(x.shape[-2:]) // 8
    return torch.fft.rfft2(F.pad(x.float(), (pad, pad, pad, pad), mode="reflect") if pad else x.float()), pad


def _filtered(spec: torch.Tensor, pad: int, hw: tuple[int, int], sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_spectrum` after a Gaussian of ``sigma`` (N,) pixels, cropped back to ``hw``."""
    hp, wp = hw[0] + 2 * pad, hw[1] + 2 * pad
    f2 = torch.fft.fftfreq(hp, device=spec.device)[:, None] ** 2 + torch.fft.rfftfreq(wp, device=spec.device)[None, :] ** 2
    gain = torch.exp((-2.0 * math.pi ** 2) * sigma.reshape(-1, 1, 1, 1) ** 2 * f2)
    return torch.fft.irfft2(spec * gain, s=(hp, wp))[..., pad:pad + hw[0], pad:pad + hw[1]]


def lowpass(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian low-pass of ``(N, C, H, W)`` with one ``sigma`` (pixels) per item, by FFT on ``x``'s device."""
    spec, pad = _spectrum(x)
    return _filtered(spec, pad, tuple(x.shape[-2:]), sigma.to(x.device, torch.float32))


def _worst_mean(values: torch.Tensor, weights: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per row of ``(N, P)``: the ``weights``-weighted mean of the largest ``values`` that carry ``fraction`` of
    the row's weight (batched sort, no host reads)."""
    v, order = values.sort(dim=1, descending=True)
    w = weights.gather(1, order)
    keep = (w.cumsum(1) - w) < fraction * w.sum(1, keepdim=True)
    w = w * keep
    return (v * w).sum(1) / w.sum(1).clamp(min=1e-12)


def _working_size(size: int, resolution: torch.Tensor) -> int:
    """``min(S, 2 r_max)`` rounded up to 32 pixels (one host read for the whole batch)."""
    return int(min(size, 32 * math.ceil(2.0 * float(resolution.max()) / 32.0)))


def _shrink(x: torch.Tensor, w: int) -> torch.Tensor:
    return x if x.shape[-1] == w else F.interpolate(x, size=(w, w), mode="bilinear", antialias=True, align_corners=False)


def _fit_blur(spec: torch.Tensor, pad: int, x: torch.Tensor, m: torch.Tensor, area: torch.Tensor,
              pixel: torch.Tensor) -> torch.Tensor:
    """The candidate blur (N,) in input pixels that brings the restored crops' grey image closest to the inputs'
    (masked mean L1): one single-channel inverse FFT per candidate for all faces (the grey image's spectrum is
    the mean of the channels' spectra)."""
    grey_spec, grey_x, w = spec.mean(1, keepdim=True), x.mean(1), x.shape[-1]
    cands = torch.tensor(BLUR_CANDIDATES, device=x.device)
    errors = torch.stack([((_filtered(grey_spec, pad, (w, w), c * pixel)[:, 0] - grey_x).abs() * m).sum((1, 2)) / area
                          for c in BLUR_CANDIDATES])
    return cands[errors.argmin(0)]


def input_consistency(inputs: torch.Tensor, restored: torch.Tensor, resolution: torch.Tensor,
                      masks: torch.Tensor | None = None) -> Consistency:
    """Degradation consistency of restored crops with their input crops (see the module docstring).

    Args:
        inputs, restored: ``(N, S, S, 3)`` float [0, 1] aligned crops (the input's face and the restored face).
        resolution: ``(N,)`` effective input resolution in pixels (:func:`input_resolution`).
        masks: ``(N, S, S)`` face masks in [0, 1], else :func:`template_face_mask`.
    """
    if inputs.shape != restored.shape or inputs.dim() != 4 or inputs.shape[-1] != 3 or inputs.shape[1] != inputs.shape[2]:
        raise HonestFaceError("face crops", f"input {tuple(inputs.shape)} and restored {tuple(restored.shape)} crops "
                              "differ or are not (N, S, S, 3)", "Pass the aligned input crops and the restored crops")
    n, size, dev = inputs.shape[0], inputs.shape[1], restored.device
    resolution = torch.as_tensor(resolution, dtype=torch.float32, device=dev).reshape(-1).clamp(1.0, float(size))
    if resolution.shape[0] != n:
        raise HonestFaceError("input resolution", f"{resolution.shape[0]} values for {n} faces", "Pass one per face")
    masks = template_face_mask(size, dev).expand(n, size, size) if masks is None else masks.to(dev, torch.float32)
    if masks.shape != inputs.shape[:3]:
        raise HonestFaceError("face masks", f"expected {tuple(inputs.shape[:3])}, got {tuple(masks.shape)}",
                              "Pass one (S, S) mask per face crop")
    if n == 0:
        empty = restored.new_zeros(0)
        return Consistency(empty, empty, empty, empty, restored.new_zeros((0, size, size)), restored.new_zeros(restored.shape))
    w = _working_size(size, resolution)
    x = _shrink(inputs.to(dev).float().permute(0, 3, 1, 2), w)
    m = _shrink(masks[:, None], w)[:, 0]
    area = m.sum((1, 2)).clamp(min=1e-6)
    mean_x = (x * m[:, None]).sum((2, 3), keepdim=True) / area[:, None, None, None]
    contrast = ((x - mean_x).abs().mean(1) * m).sum((1, 2)) / area
    spec, pad = _spectrum(_shrink(restored.float().permute(0, 3, 1, 2), w))
    pixel = w / resolution  # working pixels per input pixel
    blur = _fit_blur(spec, pad, x, m, area, pixel)
    degraded = _filtered(spec, pad, (w, w), blur * pixel)
    departure = (degraded - x).abs().mean(1) / contrast.clamp(min=1e-4)[:, None, None]
    mean = (departure * m).sum((1, 2)) / area
    region = torch.maximum(blur * pixel, torch.full_like(blur, MIN_REGION_SIGMA * w))
    smooth = lowpass(departure[:, None], region).clamp(min=0)
    # the worst share is read at a quarter of the working size: the map is smooth over >= w/64 pixels
    small = max(16, w // 4)
    worst = _worst_mean(_shrink(smooth, small).reshape(n, -1), _shrink(m[:, None], small).reshape(n, -1), WORST_FRACTION)
    maps, degraded = (F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False) if w != size else t
                      for t in (smooth * m[:, None], degraded))
    return Consistency(1.0 / (1.0 + worst), worst, mean, blur, maps[:, 0].clamp(min=0),
                       degraded.clamp(0, 1).permute(0, 2, 3, 1))


def honesty_map_images(restored: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """``(N, S, S, 3)`` pictures of honesty maps: the restored face in dimmed grey, red where it departs from the
    input (full red at a departure of half the face's contrast or more)."""
    grey = restored.float().mean(-1, keepdim=True) * 0.6
    heat = (2.0 * maps.to(restored.device).float()).clamp(0, 1)[..., None]
    red = torch.tensor([1.0, 0.0, 0.0], device=restored.device)
    return (grey * (1 - heat) + red * heat).clamp(0, 1)
