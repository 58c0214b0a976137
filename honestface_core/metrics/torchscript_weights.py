"""Weights of a TorchScript archive (``torch.jit.save``; e.g. OpenAI's CLIP ``RN50.pt``) read without TorchScript.

``torch.jit.load`` would run the archive's code; ``torch.load(weights_only=True)`` refuses such archives. Here
``data.pkl`` goes through a restricted unpickler that only rebuilds tensors and plain attribute holders, and each
class's parameter/buffer names are read from its printed code as text (never executed).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections import OrderedDict

import torch

from honestface_core.errors import HonestFaceError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _StorageType:
    """Stand-in for ``torch.<X>Storage`` in a pickle: only its dtype is used."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _ScriptObject:
    """The attributes of one pickled TorchScript object; ``qualname`` is its TorchScript class. Nothing runs."""

    qualname = ""

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"object of class {self.qualname} has a custom state")
        self.__dict__.update(state)


def _rebuild_tensor(storage: object, offset: int, size: tuple, stride: tuple, *_unused: object) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` for our storages: a strided view, bounds-checked."""
    numbers = (offset, *size, *stride)
    if not isinstance(storage, torch.Tensor) or not all(isinstance(v, int) and v >= 0 for v in numbers):
        raise pickle.UnpicklingError("malformed tensor record")
    end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else 0
    if end > storage.numel() or len(size) != len(stride):
        raise pickle.UnpicklingError("tensor outside its storage")
    return storage.as_strided(tuple(size), tuple(stride), offset)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler of a TorchScript ``data.pkl``: allows only tensor rebuilding, storage types, ``OrderedDict`` (empty
    hook dicts) and ``__torch__.*`` classes, which become plain attribute holders. Storages come from ``data/<key>``."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(archive.read(f"{prefix}data.pkl")))
        self._archive, self._prefix = archive, prefix
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self._classes[qualname]
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}'")

    def persistent_load(self, pid: object) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unknown persistent record {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
            dtype = storage_type.dtype
            storage = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if storage.numel() < numel:
                raise pickle.UnpicklingError(f"storage {key} is truncated")
            self._storages[key] = storage
        return self._storages[key]


def _declared(archive: zipfile.ZipFile, prefix: str, qualname: str) -> list[str]:
    """Names in ``__parameters__`` and ``__buffers__`` of a TorchScript class, read as text from its ``code/`` file."""
    module, _, name = qualname.rpartition(".")
    source = archive.read(f"{prefix}code/{module.replace('.', '/')}.py").decode("utf-8")
    found = re.search(rf"^class {re.escape(name)}\(.*?(?=^class |\Z)", source, re.S | re.M)
    if found is None:
        raise KeyError(f"class {qualname}")
    lists = re.findall(r"^\s*__(?:parameters|buffers)__ = \[(.*?)\]", found.group(0), re.M)
    return [n for part in lists for n in re.findall(r'"([^"]+)"', part)]


def read_torchscript_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict (parameters and buffers, as ``module.state_dict()`` names them) of a TorchScript archive
    written by ``torch.jit.save``, read without ``torch.jit.load``: ``data.pkl`` goes through a restricted unpickler
    and each class's parameter/buffer names are read from its printed code (never executed).

    Raises:
        HonestFaceError: not a readable TorchScript archive, or it holds objects other than modules and tensors.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            roots = [n[: -len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(roots) != 1 or f"{roots[0]}constants.pkl" not in names:
                raise KeyError("data.pkl/constants.pkl")
            prefix = roots[0]
            if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
                raise ValueError("big-endian archive")
            root = _RestrictedUnpickler(archive, prefix).load()
            state: dict[str, torch.Tensor] = {}
            stack, seen = [("", root)], set()
            while stack:
                name, obj = stack.pop()
                if not isinstance(obj, _ScriptObject):
                    raise pickle.UnpicklingError("the top level is not a module")
                if id(obj) in seen:  # a shared submodule: listed once, as state_dict does
                    continue
                seen.add(id(obj))
                for key in _declared(archive, prefix, obj.qualname):
                    value = obj.__dict__.get(key)
                    if isinstance(value, torch.Tensor):
                        state[name + key] = value
                    elif value is not None:
                        raise pickle.UnpicklingError(f"'{name + key}' is not a tensor")
                stack += [(f"{name}{k}.", v) for k, v in obj.__dict__.items() if isinstance(v, _ScriptObject)]
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, KeyError, ValueError, EOFError, UnicodeDecodeError,
            RuntimeError, TypeError, AttributeError, IndexError, RecursionError) as err:
        raise HonestFaceError(f"'{path}'", f"cannot be read as a TorchScript archive ({str(err)[:200]})",
                              "Use the original file; only modules and tensors are read from TorchScript archives"
                              ) from err
    return state


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip written by ``torch.jit.save`` (it has ``<root>/constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") and n.count("/") == 1 for n in archive.namelist())


__all__ = ["is_torchscript_archive", "read_torchscript_state_dict"]
