"""Write every pack node's declarations as JSON: what ComfyUI's ``/object_info`` sends for it (built from the same
class attributes as ComfyUI 0.3.75's ``node_info``), plus the parameters of its FUNCTION and which of
VALIDATE_INPUTS / IS_CHANGED it has.

    python tests/nodes/node_declarations.py OUT.json

The pack is loaded in a fresh in-process ComfyUI (CPU) whose model folders hold ``write_test_models``'s files, so
the file menus list the same names on every machine. ``test_node_declarations.py`` runs this in a subprocess (a
fresh process: ComfyUI's module state is global) and compares with ``node_declarations.json``, which this script
wrote at the commit before the declarations moved to ``nodes/declare.py``.
"""

from __future__ import annotations

import inspect
import json
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
MACHINE_PATHS = "<pyiqa cache>"  # the one machine-dependent text: a description names pyiqa's cache folder


def declarations(name: str, cls: type, display_names: dict[str, str]) -> dict:
    """``/object_info``'s entry for node ``name`` (without ``python_module``, which names the load path)."""
    info = {
        "input": cls.INPUT_TYPES(),
        "input_order": {key: list(value) for key, value in cls.INPUT_TYPES().items()},
        "output": list(cls.RETURN_TYPES),
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES))),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "name": name,
        "display_name": display_names.get(name, name),
        "description": getattr(cls, "DESCRIPTION", ""),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    info["function_parameters"] = [p for p in params if p != "self"]
    info["methods"] = [m for m in ("VALIDATE_INPUTS", "IS_CHANGED") if hasattr(cls, m)]
    return info


def dump(root: Path) -> dict:
    """Every node of the pack, in ``NODE_CLASS_MAPPINGS`` order; ComfyUI's folders and the models go in ``root``."""
    sys.path.insert(0, str(TESTS))
    sys.path.append(str(TESTS.parent))  # this checkout's honestface_core, ahead of any editable install's finder
    from comfy_harness import load_inprocess, make_base_dir, write_extra_model_paths
    from honestface_core.metrics.iqa_files import pyiqa_cache_dir
    from honestface_core.testing.models_folder import write_test_models

    write_test_models(root / "models")
    comfy = load_inprocess(make_base_dir(root / "base"),
                           write_extra_model_paths(root / "extra_model_paths.yaml", root / "models"))
    names = comfy.pack.NODE_DISPLAY_NAME_MAPPINGS
    nodes = {name: declarations(name, cls, names) for name, cls in comfy.pack_nodes.items()}
    return json.loads(json.dumps(nodes).replace(json.dumps(str(pyiqa_cache_dir()))[1:-1], MACHINE_PATHS))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="node_declarations_") as tmp:
        result = dump(Path(tmp))
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
