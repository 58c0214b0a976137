"""Image loading and validation, and conversions between ComfyUI IMAGE tensors and uint8 arrays.

Core convention: images are ``float32`` tensors ``(B, H, W, 3)``, RGB, range [0, 1]; numpy/OpenCV code takes one
image as ``np.uint8`` ``(H, W, 3)`` RGB.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .errors import HonestFaceError

MIN_SIDE = 16
"""Smallest accepted image side in pixels (our choice): below it no face can be detected or aligned."""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _check_size(h: int, w: int, what: str) -> None:
    if min(h, w) < MIN_SIDE:
        raise HonestFaceError(what, f"image is {w}x{h} pixels, smaller than the minimum {MIN_SIDE}x{MIN_SIDE}",
                              "Use a larger image that shows the face with at least a few dozen pixels")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale an integer or float array of any bit depth to uint8."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale + 0.5, 0, 255).astype(np.uint8)
    # integer images wider than 8 bits (16-bit PNG/TIFF arrive as uint16 or int32 in [0, 65535])
    return np.clip((arr.astype(np.float64) / 257.0) + 0.5, 0, 255).astype(np.uint8)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Load an image file as ``np.uint8`` ``(H, W, 3)`` RGB, validating it.

    Handles grayscale (replicated to RGB), palette, 16-bit (scaled to 8 bit), CMYK, and images with transparency
    (RGBA / LA / transparent palette): the alpha channel is composited onto white (our choice: what an image
    viewer shows). EXIF orientation is applied.

    Raises:
        HonestFaceError: naming the file, if it is missing, truncated, corrupt, not an image, or smaller than
            ``MIN_SIDE`` pixels on a side.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    what = f"image file '{path}'"
    if not path.is_file():
        raise HonestFaceError(what, "does not exist or is not a file", "Check the path")
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            if img.mode == "CMYK" or img.mode == "YCbCr" or img.mode == "1":
                img = img.convert("RGB")
            if img.mode == "PA":
                img = img.convert("RGBA")
            mode = img.mode
            arr = np.asarray(img)
    except UnidentifiedImageError as e:
        raise HonestFaceError(what, "is not an image file that can be read", "Use a PNG, JPEG, WebP, BMP or TIFF file") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise HonestFaceError(what, f"is truncated or corrupt ({e})", "Re-export or re-download the image") from e

    alpha = None
    if mode in ("RGBA", "LA", "La", "RGBa"):
        arr, alpha = arr[..., :-1], arr[..., -1]
    arr = _to_uint8(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[-1] != 3:
        raise HonestFaceError(what, f"has an unsupported pixel layout (mode {mode}, {arr.shape[-1]} channels)",
                              "Convert it to an RGB PNG or JPEG")
    if alpha is not None:
        a = _to_uint8(alpha).astype(np.float32)[..., None] / 255.0
        arr = (arr.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
    _check_size(arr.shape[0], arr.shape[1], what)
    return np.ascontiguousarray(arr)


def as_rgb_batch(images: torch.Tensor, input_name: str) -> torch.Tensor:
    """Validate a ComfyUI IMAGE and return it as float ``(B, H, W, 3)`` in [0, 1].

    Accepts ``(H, W, C)`` or ``(B, H, W, C)`` with C = 1 (grey, replicated), 2 (grey + alpha, alpha dropped),
    3, or 4 (RGBA, alpha dropped as ComfyUI's own nodes do; our choice). Integer tensors are scaled from 0..255.

    Raises:
        HonestFaceError: naming ``input_name`` for a wrong type/shape, an empty batch or a too small image.
    """
    if not isinstance(images, torch.Tensor):
        raise HonestFaceError(f"input '{input_name}'", f"expected an IMAGE tensor, got {type(images).__name__}",
                              "Connect an IMAGE output (e.g. from Load Image)")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[-1] not in (1, 2, 3, 4):
        raise HonestFaceError(f"input '{input_name}'", f"expected shape (batch, height, width, channels), got {tuple(images.shape)}",
                              "Connect an IMAGE output (e.g. from Load Image)")
    if images.shape[0] == 0:
        raise HonestFaceError(f"input '{input_name}'", "the image batch is empty", "Connect at least one image")
    _check_size(images.shape[1], images.shape[2], f"input '{input_name}'")
    if not images.is_floating_point():
        images = images.float() / 255.0
    c = images.shape[-1]
    if c in (1, 2):
        images = images[..., :1].expand(*images.shape[:-1], 3)
    elif c == 4:
        images = images[..., :3]
    return images.float().contiguous()


def tensor_to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """``(B, H, W, C)`` float [0, 1] tensor -> list of ``np.uint8`` ``(H, W, 3)`` RGB arrays (rounded)."""
    images = as_rgb_batch(images, "images")
    arr = (images.detach().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    return [np.ascontiguousarray(a) for a in arr]


def uint8_to_tensor(imgs: np.ndarray | list[np.ndarray]) -> torch.Tensor:
    """``np.uint8`` ``(H, W, 3)``, ``(B, H, W, 3)`` or a list of same-size ``(H, W, 3)`` -> float ``(B, H, W, 3)``."""
    if isinstance(imgs, (list, tuple)):
        if not imgs:
            raise HonestFaceError("images", "the list is empty", "Pass at least one image")
        shapes = {a.shape for a in imgs}
        if len(shapes) != 1:
            raise HonestFaceError("images", f"images have different sizes {sorted(shapes)}",
                                  "Resize them to one size before batching, or process them one at a time")
        imgs = np.stack(imgs)
    arr = np.asarray(imgs)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise HonestFaceError("images", f"expected (H, W, 3) uint8 arrays, got shape {arr.shape}", "Pass RGB images")
    return torch.from_numpy(_to_uint8(arr).astype(np.float32) / 255.0)
