"""Image loading and validation, and conversions between ComfyUI IMAGE tensors and uint8 arrays.

Core convention: images are ``float32`` tensors ``(B, H, W, 3)``, RGB, range [0, 1]; numpy/OpenCV code takes one
image as ``np.uint8`` ``(H, W, 3)`` RGB.
"""

from __future__ import annotations

import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.tensor_checks import first_non_finite

MIN_SIDE = 16
"""Smallest accepted image side in pixels (our choice): below it no face can be detected or aligned."""

MAX_MEGAPIXELS_ENV = "HONESTFACE_MAX_MEGAPIXELS"
DEFAULT_MAX_MEGAPIXELS = 50.0
"""Largest accepted image, in megapixels, unless ``$HONESTFACE_MAX_MEGAPIXELS`` says otherwise (our choice: a
50 MP photo needs about 4 GB for restoring, see :data:`BYTES_PER_PIXEL`)."""

BYTES_PER_PIXEL = 80
"""Memory a restore call needs per input pixel, beyond the models (measured, docs/restore.md)."""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def max_megapixels() -> float:
    """The image size limit in megapixels: ``$HONESTFACE_MAX_MEGAPIXELS`` or :data:`DEFAULT_MAX_MEGAPIXELS`."""
    text = os.environ.get(MAX_MEGAPIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_MEGAPIXELS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise HonestFaceError(f"environment variable {MAX_MEGAPIXELS_ENV}", f"'{text}' is not a positive number of "
                              "megapixels", f"Set it to e.g. 100, or unset it for the default {DEFAULT_MAX_MEGAPIXELS:g}")
    return value


def _check_min_side(width: int, height: int, what: str) -> None:
    if min(height, width) < MIN_SIDE:
        raise HonestFaceError(what, f"image is {width}x{height} pixels, smaller than the minimum {MIN_SIDE}x{MIN_SIDE}",
                              "Use a larger image that shows the face with at least a few dozen pixels")


def check_image_size(width: int, height: int, what: str) -> None:
    """Refuse an image smaller than :data:`MIN_SIDE` on a side or larger than :func:`max_megapixels`."""
    _check_min_side(width, height, what)
    pixels, limit = width * height, max_megapixels()
    if pixels > limit * 1e6:
        raise HonestFaceError(
            what, f"image is {width}x{height} = {pixels / 1e6:.1f} megapixels, more than the limit of {limit:g} "
                  f"megapixels (restoring needs about {BYTES_PER_PIXEL} bytes of memory per pixel: "
                  f"{pixels * BYTES_PER_PIXEL / 2**30:.1f} GiB here)",
            f"Downscale the image, or, if this machine has the memory, raise the limit with the environment variable "
            f"{MAX_MEGAPIXELS_ENV} (e.g. {MAX_MEGAPIXELS_ENV}={math.ceil(pixels / 1e6)})")


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


@contextmanager
def _open_image(path: Path, what: str) -> Iterator:
    """A PIL image whose header passed :func:`check_image_size` (nothing decoded yet); errors name the file."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise HonestFaceError(what, "does not exist or is not a file", "Check the path")
    try:
        with Image.open(path) as img:
            check_image_size(img.width, img.height, what)
            yield img
    except HonestFaceError:
        raise
    except Image.DecompressionBombError as e:  # above twice Pillow's MAX_IMAGE_PIXELS, refused at the header
        found = re.search(r"\((\d+) pixels\)", str(e))
        declared = f"declares {int(found.group(1)) / 1e6:.1f} megapixels" if found else "declares too many pixels"
        pillow = 2 * Image.MAX_IMAGE_PIXELS / 1e6
        raise HonestFaceError(what, f"its header {declared}: more than HonestFace's limit of {max_megapixels():g} "
                              f"megapixels or Pillow's decompression-bomb limit of {pillow:.0f}",
                              f"Downscale the image to at most {min(max_megapixels(), pillow):g} megapixels") from e
    except UnidentifiedImageError as e:
        raise HonestFaceError(what, "is not an image file that can be read", "Use a PNG, JPEG, WebP, BMP or TIFF file") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise HonestFaceError(what, f"is truncated or corrupt ({e})", "Re-export or re-download the image") from e


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header, checked as :func:`load_image` checks it, without
    decoding the pixels (a quick check of inputs before any model loads)."""
    path = Path(path)
    with _open_image(path, f"image file '{path}'") as img:
        return img.width, img.height


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Load an image file as ``np.uint8`` ``(H, W, 3)`` RGB, validating it.

    Handles grayscale (replicated to RGB), palette, 16-bit (scaled to 8 bit), 32-bit float, CMYK, and images with
    transparency (RGBA / LA / transparent palette): the alpha channel is composited onto white (our choice: what an
    image viewer shows). EXIF orientation is applied. The size is checked from the header, before decoding.

    Raises:
        HonestFaceError: naming the file, if it is missing, truncated, corrupt, not an image, smaller than
            ``MIN_SIDE`` pixels on a side, larger than :func:`max_megapixels`, or has NaN / infinite pixel values.
    """
    from PIL import ImageOps

    path = Path(path)
    what = f"image file '{path}'"
    with _open_image(path, what) as img:
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

    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise HonestFaceError(what, f"has {int((~np.isfinite(arr)).sum())} NaN or infinite pixel value(s)",
                              "Re-export it with finite values (e.g. as an 8- or 16-bit PNG)")
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
    return np.ascontiguousarray(arr)


def rgb_layout(images: torch.Tensor, input_name: str) -> torch.Tensor:
    """Type, shape and channel handling of :func:`as_rgb_batch`, without its size and value checks (for steps
    inside the pipeline, whose input was checked where it entered)."""
    what = f"input '{input_name}'"
    if not isinstance(images, torch.Tensor):
        raise HonestFaceError(what, f"expected an IMAGE tensor, got {type(images).__name__}",
                              "Connect an IMAGE output (e.g. from Load Image)")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[-1] not in (1, 2, 3, 4):
        raise HonestFaceError(what, f"expected shape (batch, height, width, channels), got {tuple(images.shape)}",
                              "Connect an IMAGE output (e.g. from Load Image)")
    if images.shape[0] == 0:
        raise HonestFaceError(what, "the image batch is empty", "Connect at least one image")
    _check_min_side(images.shape[2], images.shape[1], what)
    if not images.is_floating_point():
        images = images.float() / 255.0
    c = images.shape[-1]
    if c in (1, 2):
        images = images[..., :1].expand(*images.shape[:-1], 3)
    elif c == 4:
        images = images[..., :3]
    return images.float().contiguous()


def as_rgb_batch(images: torch.Tensor, input_name: str) -> torch.Tensor:
    """Validate a ComfyUI IMAGE and return it as float ``(B, H, W, 3)`` in [0, 1].

    Accepts ``(H, W, C)`` or ``(B, H, W, C)`` with C = 1 (grey, replicated), 2 (grey + alpha, alpha dropped),
    3, or 4 (RGBA, alpha dropped as ComfyUI's own nodes do; our choice). Integer tensors are scaled from 0..255.
    NaN or infinite values are refused, not clamped (our choice: they mean an upstream node failed, and would
    silently turn into black pixels).

    Raises:
        HonestFaceError: naming ``input_name`` for a wrong type/shape, an empty batch, an image smaller than
            ``MIN_SIDE`` or larger than :func:`max_megapixels`, or NaN / infinite values.
    """
    what = f"input '{input_name}'"
    images = rgb_layout(images, input_name)
    check_image_size(images.shape[2], images.shape[1], what)
    bad = first_non_finite({f"image {i}": image for i, image in enumerate(images)})
    if bad is not None:
        raise HonestFaceError(what, f"{bad} of the batch contains NaN or infinite values",
                              "Fix the node that made it (e.g. a VAE decode that overflowed in fp16: decode in fp32)")
    return images


def tensor_to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """``(B, H, W, C)`` float [0, 1] tensor -> list of ``np.uint8`` ``(H, W, 3)`` RGB arrays (rounded; NaN -> 0)."""
    images = rgb_layout(images, "images")
    arr = (images.detach().nan_to_num(0.0).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
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
