"""Reading weight files that are not ours (facexlib, OSDFace, SD-2.1 checkpoints, metric networks), safely.

A ``.safetensors`` file is read with safetensors; anything else with ``torch.load(weights_only=True)``, which
rebuilds tensors and plain containers only and refuses pickled code. The few objects PyTorch Lightning, OmegaConf
and numpy put in checkpoints resolve to inert stand-ins (:mod:`.checkpoint_globals`), so Lightning ``.ckpt`` files
load without those packages. Every failure is a :class:`HonestFaceError` that names the file and what it should have
been, with torch's whole reason, never a traceback from inside torch.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Sequence

import torch

from honestface_core.files.checkpoint_globals import allowed_globals
from honestface_core.errors import HonestFaceError

#: keys under which checkpoints nest their state dict (Lightning/LDM, BasicSR's EMA and plain weights)
NESTING_KEYS = ("state_dict", "params_ema", "params")
#: prefixes that training wrappers put before every key (DataParallel, torch.compile)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: what torch's weights_only unpickler says when it refuses a global or a call (as opposed to a damaged file)
_REFUSAL = re.compile(r"Unsupported global|whose module \S+ is blocked|unrecognized function|Can only |must be imported to load")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def read_weights_file(path: str | os.PathLike, what: str) -> object:
    """What a ``.safetensors`` file (a dict of tensors) or a torch file (``torch.load(weights_only=True)`` with
    :func:`.checkpoint_globals.allowed_globals`) holds.

    Raises:
        HonestFaceError: damaged, unreadable, or holding pickled objects that are refused (names the file and ``what``).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        with allowed_globals():
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise _unreadable(path, what, err) from err


def _unreadable(path: Path, what: str, err: Exception) -> HonestFaceError:
    """The error for a weight file that failed to load: refused for safety, not readable, or damaged; with torch's
    whole message on one line (ANSI escape codes removed)."""
    reason = " ".join(_ANSI.sub("", str(err)).split()) or type(err).__name__
    if isinstance(err, pickle.UnpicklingError) and _REFUSAL.search(reason):
        return HonestFaceError(
            f"'{path}'", f"cannot be read as {what}: it holds pickled Python objects that are refused for safety, "
            f"and no code from it was run ({reason})",
            "Lightning, OmegaConf and numpy objects are already accepted (docs/model.md). If you trust this file, "
            "re-save just its tensors in a separate Python session (torch.save(torch.load(path, weights_only=False)"
            "['state_dict'], 'weights.pth')) and use that file")
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):  # not opened
        return HonestFaceError(f"'{path}'", f"cannot be read as {what} ({reason})", "Check that it is a readable file")
    return HonestFaceError(f"'{path}'", f"cannot be read as {what}: the file is damaged, truncated or not a weight "
                           f"file ({reason})", "Replace it with the original file")


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
