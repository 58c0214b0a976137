"""Devices and precisions from user-facing names, refused with a clear error before any model loads."""

from __future__ import annotations

import torch

from honestface_core.errors import HonestFaceError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto", what: str = "device") -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` (where torch has
    it). Anything else (``meta``, a GPU index that does not exist, a typo) is refused before any model loads."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise HonestFaceError(what, f"'{name}' is not a device name", "Use auto, cpu, cuda or cuda:N") from err
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HonestFaceError(what, f"'{name}' was asked for but torch sees no CUDA GPU",
                                  "Use cpu (or auto), or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise HonestFaceError(what, f"'{name}' was asked for but torch sees {count} CUDA GPU(s) "
                                  f"(cuda:0..cuda:{count - 1})", "Use one of those, or cuda / auto")
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise HonestFaceError(what, f"'{name}' is not a device HonestFace can run on", "Use auto, cpu, cuda or cuda:N")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"``: bf16 on GPUs that support it, else fp16 on GPUs, fp32 on CPU (our choice: CPU half precision
    is slow and imprecise); or ``"fp32"``, ``"bf16"``, ``"fp16"``."""
    name = str(name).strip().lower()
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise HonestFaceError("dtype", f"'{name}' is unknown", f"Use auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]
