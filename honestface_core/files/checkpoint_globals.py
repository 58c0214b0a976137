"""Inert stand-ins for the few objects PyTorch Lightning, OmegaConf and numpy put in checkpoints (docs/model.md).

``torch.load(weights_only=True)`` rebuilds tensors and plain containers and refuses every other global a pickle
names. Lightning checkpoints name a few more: Lightning 1.0-1.4 key the callback states by the callback's class
(``ModelCheckpoint``), Lightning 1.0.x stores ``hyper_parameters`` as its ``AttributeDict``, hyper-parameters given as
an OmegaConf config are pickled ``DictConfig`` objects, and old Stable Diffusion checkpoints hold numpy scalars.
:func:`allowed_globals` lets torch's unpickler resolve exactly these names, for one load: the Lightning and OmegaConf
names become stand-ins defined here that keep what the file gives them and run nothing, so neither package is
needed or imported. Every other global is still refused. Our choice: the list holds only what those packages write.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import typing
from functools import lru_cache
from typing import Iterator

import torch


class PickledObject:
    """An object of a class that is not imported (``pickled_as`` names it): keeps the constructor arguments and the
    state the file gives it, and runs nothing."""

    pickled_as = ""

    def __new__(cls, *args: object, **kwargs: object) -> PickledObject:
        obj = super().__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __setstate__(self, state: object) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.pickled_as} args={self.args!r} state={self.state!r}>"


class PlainDict:
    """Unpickles a dict subclass (Lightning's ``AttributeDict``, ``collections.defaultdict``) as a plain ``dict``:
    torch's unpickler fills plain dicts only. A defaultdict's default factory is dropped."""

    def __new__(cls, *args: object, **kwargs: object) -> dict:  # type: ignore[misc]
        return {}


#: classes Lightning 1.0-1.4 pickle as the keys of ``callbacks`` (built-in callbacks that save a state)
LIGHTNING_CALLBACKS = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
                       "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
                       "pytorch_lightning.callbacks.timer.Timer")
#: Lightning's hyper-parameter dict under each package name it has had (1.0.x pickles ``hparams`` as it is)
ATTRIBUTE_DICTS = ("pytorch_lightning.utilities.parsing.AttributeDict", "lightning_fabric.utilities.data.AttributeDict",
                   "lightning.fabric.utilities.data.AttributeDict")
#: the classes a pickled OmegaConf 2.0-2.3 ``DictConfig`` / ``ListConfig`` of plain values names
OMEGACONF_CLASSES = ("omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
                     "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode",
                     "omegaconf.nodes.StringNode", "omegaconf.nodes.IntegerNode", "omegaconf.nodes.FloatNode",
                     "omegaconf.nodes.BooleanNode")
#: Python objects those pickles name (OmegaConf's type fields, argparse hyper-parameters): allowed as themselves,
#: none runs anything when the unpickler calls it with pickled values
PLAIN_GLOBALS: dict[str, object] = {
    "argparse.Namespace": argparse.Namespace, "typing.Any": typing.Any, "builtins.dict": dict,
    "builtins.list": list, "builtins.int": int, "builtins.float": float, "builtins.str": str, "builtins.bool": bool,
}


def _stand_in(path: str) -> type[PickledObject]:
    name = path.rsplit(".", 1)[1]
    return type(name, (PickledObject,), {"__module__": __name__, "__qualname__": name, "pickled_as": path})


@lru_cache(maxsize=1)
def allow_list() -> tuple[tuple[object, str], ...]:
    """``(object, "module.name")`` for every global that :func:`allowed_globals` lets the unpickler resolve."""
    import numpy as np

    entries: list[tuple[object, str]] = [(_stand_in(p), p) for p in LIGHTNING_CALLBACKS + OMEGACONF_CLASSES]
    entries += [(PlainDict, p) for p in ATTRIBUTE_DICTS + ("collections.defaultdict",)]
    entries += [(obj, p) for p, obj in PLAIN_GLOBALS.items()]
    # numpy scalars: the rebuild function (module path of numpy 1.x and 2.x), np.dtype and the dtype classes it builds
    scalar = np.float64(0).__reduce__()[0]
    entries += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), (np.dtype, "numpy.dtype")]
    entries += [(t, f"numpy.dtypes.{t.__name__}") for t in {type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}]
    return tuple(entries)


_LOCK = threading.Lock()


@contextlib.contextmanager
def allowed_globals() -> Iterator[None]:
    """Within the block, ``torch.load(weights_only=True)`` also resolves :func:`allow_list`'s names.

    torch keeps its allow-list in one global set: the block holds a lock and adds and removes only the entries that
    were not there before. torch < 2.5 (no ``safe_globals``) loads without them.
    """
    if not hasattr(torch.serialization, "safe_globals"):
        yield
        return
    with _LOCK:
        present = set(torch.serialization.get_safe_globals())
        with torch.serialization.safe_globals([e for e in allow_list() if e not in present]):
            yield


__all__ = ["ATTRIBUTE_DICTS", "LIGHTNING_CALLBACKS", "OMEGACONF_CLASSES", "PLAIN_GLOBALS", "PickledObject",
           "PlainDict", "allow_list", "allowed_globals"]
