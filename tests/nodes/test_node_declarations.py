"""Every node's declarations, as ComfyUI's /object_info sends them, stay compatible with what they were before the
declarations moved to ``nodes/declare.py`` (node_declarations.json): the same nodes in the same order, the same ids,
display names, categories, required inputs (names, order, types, choices, defaults, limits, tooltips) and the
FUNCTION's parameters. New capabilities may only append: optional inputs after the old ones, outputs after the old
ones, FUNCTION parameters after the old ones, new nodes after the old ones. Saved workflows depend on exactly this
(widget values are stored by input order, links by output index); descriptions may be reworded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BEFORE = HERE / "node_declarations.json"  # written by node_declarations.py at the commit before nodes/declare.py


@pytest.fixture(scope="module")
def now(tmp_path_factory) -> dict:
    """This checkout's declarations, dumped by a fresh process (ComfyUI's module state is global)."""
    out = tmp_path_factory.mktemp("declarations") / "now.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run([sys.executable, str(HERE / "node_declarations.py"), str(out)], env=env, cwd=HERE.parents[1],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.comfy
@pytest.mark.slow
def test_same_nodes_in_the_same_order(now):
    before = list(json.loads(BEFORE.read_text()))
    assert list(now)[:len(before)] == before


@pytest.mark.comfy
@pytest.mark.slow
@pytest.mark.parametrize("node", list(json.loads(BEFORE.read_text())))
def test_declarations_unchanged(now, node):
    before = json.loads(BEFORE.read_text())[node]
    assert node in now, f"{node} is no longer registered"
    after = now[node]
    appended = ("output", "output_is_list", "output_name", "function_parameters")
    for key in ("name", "display_name", "category", "output_node", "methods"):
        assert after.get(key) == before.get(key), f"{node}: '{key}' changed"
    for key in appended:
        old = before.get(key, [])
        assert after.get(key, [])[:len(old)] == old, f"{node}: '{key}' changed (only appending is compatible)"
    assert len(after.get("output_tooltips", [])) == len(after["output"])  # one (possibly reworded) per output
    for section in ("required", "optional"):
        old, new = before["input"].get(section, {}), after["input"].get(section, {})
        assert list(new)[:len(old)] == list(old), f"{node}: {section} inputs reordered or removed"
        assert after["input_order"].get(section, [])[:len(old)] == before["input_order"].get(section, [])
        if section == "required":
            assert list(new) == list(old), f"{node}: a required input was added (saved workflows lack it)"
        for name in old:  # types, choices, defaults, limits; tooltips may be reworded
            assert _without_tooltip(new[name]) == _without_tooltip(old[name]), f"{node}: input '{name}' changed"


def _without_tooltip(spec: list) -> list:
    return [spec[0], {k: v for k, v in spec[1].items() if k != "tooltip"}] if len(spec) > 1 else spec


def _fresh_declare():
    """A fresh copy of nodes/declare.py (no ComfyUI import in it), under a private name: importing the ``nodes``
    package here would shadow ComfyUI's own ``nodes`` module."""
    spec = importlib.util.spec_from_file_location("_declare_under_test", HERE.parents[1] / "nodes" / "declare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_choices_are_listed_when_comfyui_asks():
    declare, files = _fresh_declare(), ["a.onnx"]

    @declare.node("TestNode", "Test Node", "HonestFace/test", "run", "A node.",
                  required={"file": declare.field(lambda: list(files), "A file."),
                            "size": declare.field("INT", "Size.", default=8, min=1)},
                  outputs=[("IMAGE", "image", "An image.")])
    class TestNode:
        def run(self, file, size):
            return (file,)

    assert TestNode.INPUT_TYPES() == {"required": {"file": (["a.onnx"], {"tooltip": "A file."}),
                                                   "size": ("INT", {"default": 8, "min": 1, "tooltip": "Size."})}}
    files.append("b.onnx")
    first = TestNode.INPUT_TYPES()
    assert first["required"]["file"][0] == ["a.onnx", "b.onnx"]
    first["required"]["size"][1]["default"] = 99  # a caller changing what it got changes nothing declared
    assert TestNode.INPUT_TYPES()["required"]["size"][1]["default"] == 8
    assert (TestNode.RETURN_TYPES, TestNode.RETURN_NAMES, TestNode.OUTPUT_TOOLTIPS) == (("IMAGE",), ("image",),
                                                                                        ("An image.",))
    assert declare.NODE_CLASS_MAPPINGS == {"TestNode": TestNode}
    assert declare.NODE_DISPLAY_NAME_MAPPINGS == {"TestNode": "Test Node"}


def test_a_node_id_declared_twice_or_a_missing_function_stops_the_import():
    declare = _fresh_declare()

    class Runs:
        def run(self):
            return ()

    declare.node("TestNode", "Test Node", "HonestFace/test", "run", "A node.", required={})(Runs)
    with pytest.raises(ValueError, match="'TestNode' is declared twice"):
        declare.node("TestNode", "Other", "HonestFace/test", "run", "A node.", required={})(type("Other", (Runs,), {}))
    with pytest.raises(TypeError, match="Runs has no method 'execute'"):
        declare.node("TestNode2", "Test Node 2", "HonestFace/test", "execute", "A node.", required={})(Runs)
    assert list(declare.NODE_CLASS_MAPPINGS) == ["TestNode"]
