"""Weight files of the no-reference quality metrics (MUSIQ, CLIP-IQA, MANIQA): where they are looked for, how
they are read. Never downloaded.

A file is looked for, in order: the explicit path the caller gives; ``<models>/iqa/<file>`` (our choice of
folder); pyiqa's download cache ``$TORCH_HOME/hub/pyiqa/<file>`` (``~/.cache/torch/hub/pyiqa``), so a file that a
pyiqa user already has is found under the name pyiqa gives it. Files are read with safetensors or
``torch.load(weights_only=True)``: a checkpoint that needs arbitrary unpickling is refused with a message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from ..errors import HonestFaceError
from .image_quality import MetricUnavailable

IQA_FOLDER = "iqa"
#: prefixes that training wrappers put before every key (DataParallel, torch.compile)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def pyiqa_cache_dir() -> Path:
    """pyiqa's download cache: ``<torch hub dir>/pyiqa``."""
    return Path(torch.hub.get_dir()) / "pyiqa"


def iqa_folders(models_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders a quality-metric weight file is looked for in: ``<models>/iqa`` (when given), pyiqa's cache."""
    return ([Path(models_dir) / IQA_FOLDER] if models_dir else []) + [pyiqa_cache_dir()]


def find_iqa_file(metric: str, filenames: Sequence[str], models_dir: str | os.PathLike | None = None,
                  path: str | os.PathLike | None = None, extra_folders: Sequence[Path] = ()) -> Path:
    """The weight file of ``metric``: ``path`` if given, else the first of ``filenames`` found in :func:`iqa_folders`,
    then in ``extra_folders`` (e.g. the caches other tools keep the file in).

    Raises:
        MetricUnavailable: nothing found; the message names the file and the folders it belongs in.
    """
    if path:
        if not Path(path).is_file():
            raise MetricUnavailable(f"{metric} skipped: weight file '{path}' not found")
        return Path(path)
    folders = iqa_folders(models_dir) + [Path(f) for f in extra_folders]
    for folder in folders:
        for name in filenames:
            if (folder / name).is_file():
                return folder / name
    where = " or ".join(f"'{f}'" for f in folders)
    also = f" (or {', '.join(filenames[1:])})" if len(filenames) > 1 else ""
    raise MetricUnavailable(f"{metric} skipped: weight file {filenames[0]}{also} missing, put it in {where}")


def read_weights_file(path: str | os.PathLike, what: str) -> object:
    """What a ``.safetensors`` file (a dict of tensors) or a torch file (``torch.load(weights_only=True)``) holds.

    Raises:
        HonestFaceError: corrupt, or holding pickled objects that ``weights_only`` refuses (names the file and ``what``).
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or pickled objects that weights_only refuses
        raise HonestFaceError(f"'{path}'", f"cannot be read as {what} ({str(err).splitlines()[0][:200]})",
                              f"Use the original {what} file; checkpoints holding pickled Python objects are refused "
                              "for safety") from err


def read_state_dict(path: str | os.PathLike, what: str, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or a torch checkpoint file, unwrapped from ``key`` (e.g. ``"params"``) when the
    file nests them there, with DataParallel/compile prefixes removed.

    Raises:
        HonestFaceError: the file cannot be read safely or holds no tensors (names the file and ``what`` it should be).
    """
    path = Path(path)
    state = read_weights_file(path, what)
    if key is not None and isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HonestFaceError(f"'{path}'", f"is not {what} (expected a dict of tensors)", f"Use the original {what} file")
    out = {}
    for k, v in state.items():
        for prefix in _WRAPPER_PREFIXES:
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
        raise HonestFaceError(f"'{path}'", f"does not match {what} ({'; '.join(parts)})", f"Use the original {what} file")
    module.load_state_dict(state, strict=True)


__all__ = ["IQA_FOLDER", "find_iqa_file", "iqa_folders", "load_weights", "pyiqa_cache_dir", "read_state_dict",
           "read_weights_file"]
