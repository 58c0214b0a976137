"""Every node's declarations, as ComfyUI's /object_info sends them, stay what they were before the declarations
moved to ``nodes/declare.py``: ids, display names, categories, descriptions, inputs (names, order, types, choices,
defaults, limits, tooltips), outputs (types, names, order, tooltips), output nodes, and the FUNCTION's parameters.
Saved workflows depend on these (widget values are stored by input order)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.comfy, pytest.mark.slow]

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


def test_same_nodes_in_the_same_order(now):
    assert list(now) == list(json.loads(BEFORE.read_text()))


@pytest.mark.parametrize("node", list(json.loads(BEFORE.read_text())))
def test_declarations_unchanged(now, node):
    before = json.loads(BEFORE.read_text())[node]
    assert node in now, f"{node} is no longer registered"
    for key in sorted(set(before) | set(now[node])):
        assert now[node].get(key) == before.get(key), f"{node}: '{key}' changed"  # input_order: saved widget order
