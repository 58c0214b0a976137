"""HonestFace model: VRE, embedders, fusion, generator (SD-2.1 UNet + LoRA), bundle I/O, OSDFace import.

Public names are imported lazily (diffusers is heavy and ``model.iresnet`` must stay cheap to import):
``HonestFaceConfig``, ``HonestFaceModel``, ``ReferenceBatch``, ``save_bundle``, ``load_honestface``,
``read_bundle``, ``load_osdface``, ``load_base_model``, ``find_base_model``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "HonestFaceConfig": "config", "HonestFaceModel": "honestface", "ReferenceBatch": "honestface",
    "save_bundle": "bundle", "load_honestface": "bundle", "read_bundle": "bundle", "load_osdface": "osdface",
    "load_base_model": "base_model", "find_base_model": "base_model",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
