"""ComfyUI adapters for ``honestface_core``: one module per concern, merged here.

To add a node module (it must define ``NODE_CLASS_MAPPINGS`` and ``NODE_DISPLAY_NAME_MAPPINGS``), add one import
line below the others; every imported module with mappings is merged.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _import_core_from_pack() -> None:
    """Make the pack's own ``honestface_core`` importable without putting the pack folder on ``sys.path``
    (that would expose this ``nodes`` package under ComfyUI's ``nodes`` name). A copy already imported, e.g. the
    editable install used by the CLI and tests, is used as is."""
    if "honestface_core" in sys.modules:
        return
    package_dir = Path(__file__).resolve().parents[1] / "honestface_core"
    spec = importlib.util.spec_from_file_location("honestface_core", package_dir / "__init__.py",
                                                  submodule_search_locations=[str(package_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["honestface_core"] = module
    spec.loader.exec_module(module)


_import_core_from_pack()

from .model_folders import register_model_folders  # noqa: E402

register_model_folders()

from . import loaders, detection, identity, references, pasteback  # noqa: E402,I001
from . import evaluation, quality  # noqa: E402
from . import restore  # noqa: E402

_MODULES = [m for m in list(globals().values()) if isinstance(m, ModuleType) and hasattr(m, "NODE_CLASS_MAPPINGS")]

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
for _module in _MODULES:
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
