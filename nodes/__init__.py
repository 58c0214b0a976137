"""ComfyUI adapters for ``honestface_core``: one module per concern.

Each node is declared once with ``@node`` (``declare.py``), which registers it; to add a node module, add one import
line below the others. The mappings ComfyUI reads are the registry's.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


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

# imported for their @node registrations, in the order the nodes are listed
from . import loaders, detection, identity, references, pasteback  # noqa: E402,F401,I001
from . import evaluation, quality  # noqa: E402,F401
from . import restore  # noqa: E402,F401
from . import identity_library  # noqa: E402,F401
from .declare import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
