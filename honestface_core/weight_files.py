"""Reading weight files that are not ours (facexlib, OSDFace, SD-2.1 checkpoints, metric networks), safely.

A ``.safetensors`` file is read with safetensors; anything else with ``torch.load(weights_only=True)``, which
rebuilds tensors and plain containers only and refuses pickled code. Every failure is a :class:`HonestFaceError`
that names the file and what it should have been, never a traceback from inside torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from .errors import HonestFaceError

#: keys under which checkpoints nest their state dict (Lightning/LDM, BasicSR's EMA and plain weights)
NESTING_KEYS = ("state_dict", "params_ema", "params")
#: prefixes that training wrappers put before every key (DataParallel, torch.compile)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_weights_file(path: str | os.PathLike, what: str) -> object:
    """What a ``.safetensors`` file (a dict of tensors) or a torch file (``torch.load(weights_only=True)``) holds.

    Raises:
        HonestFaceError: corrupt, or holding pickled objects that ``weights_only`` refuses (names the file and ``what``).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or truncated file, or pickled objects that weights_only refuses
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise HonestFaceError(f"'{path}'", f"cannot be read as {what} ({reason})",
                              "Replace it with the original file (this one may be truncated). Files holding pickled "
                              "Python objects are refused for safety; if you trust this one, re-save just its tensors "
                              "in a separate session (torch.save(ckpt['state_dict'], 'weights.pth'))") from err


def read_state_dict(path: str | os.PathLike, what: str, nesting: Sequence[str] = NESTING_KEYS) -> dict[str, torch.Tensor]:
    """The tensors of a weight file: unwrapped from the first of ``nesting`` that holds a dict, non-tensor entries
    (version numbers, optimizer steps) dropped, DataParallel/compile prefixes removed.

    Raises:
        HonestFaceError: the file cannot be read safely or holds no tensors (names the file and ``what`` it should be).
    """
    state = read_weights_file(path, what)
    if isinstance(state, dict):
        state = next((state[k] for k in nesting if isinstance(state.get(k), dict)), state)
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)} \
        if isinstance(state, dict) else {}
    if not tensors:
        raise HonestFaceError(f"'{path}'", f"is not {what} (expected a dict of tensors)",
                              "Replace it with the original file")
    out = {}
    for k, v in tensors.items():
        for prefix in WRAPPER_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike, what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error that names the file and the first differing keys
    or shapes instead of torch's wall of text."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''} ({len(items)})"
                 for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                      ("wrong shapes", shapes)) if items]
        raise HonestFaceError(f"'{path}'", f"does not match {what} ({'; '.join(parts)})",
                              "Replace it with the original file")
    module.load_state_dict(state, strict=True)


__all__ = ["NESTING_KEYS", "WRAPPER_PREFIXES", "load_weights", "read_state_dict", "read_weights_file"]
