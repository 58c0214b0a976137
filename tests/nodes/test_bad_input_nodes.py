"""Hostile and careless node input inside a real ComfyUI 0.3.75 (in-process): choice declarations that ComfyUI's own
validation enforces, and path-building node strings (folder names, file name prefixes, identity-set names)."""

from __future__ import annotations

import asyncio
import os

import pytest
import torch

from honestface_core.errors import HonestFaceError

pytestmark = pytest.mark.comfy

BAD_NAMES = [
    ("refs\x00evil", "contains a control character"),
    ("r" * 5000, "is 5000 characters long"),
    ("../../etc", "contains '..'"),
    ("refs/../../../tmp", "contains '..'"),
    ("/etc", "is an absolute path"),
]


@pytest.fixture(scope="module")
def comfy(comfy_inprocess):
    return comfy_inprocess


def _choice_declarations(comfy):
    for name, cls in comfy.pack_nodes.items():
        for section, inputs in cls.INPUT_TYPES().items():
            for inp, spec in (inputs.items() if isinstance(inputs, dict) else ()):
                yield f"{name}.{inp}", spec[0]


def test_no_node_declares_a_tuple_of_choices(comfy):
    """ComfyUI 0.3.75 checks a choice input against its options only when they are a list; a tuple reaches the
    node unchecked (precision="fp8" became a KeyError)."""
    tuples = [where for where, kind in _choice_declarations(comfy) if isinstance(kind, tuple)]
    assert tuples == []
    lists = [where for where, kind in _choice_declarations(comfy) if isinstance(kind, list)]
    assert "HonestFaceModelLoader.precision" in lists and "HonestFaceLandmarkEvaluation.input_kind" in lists


def _validate(comfy, prompt: dict):
    import execution

    return asyncio.run(execution.validate_prompt("test", prompt, None))


def _restore_prompt(precision: str) -> dict:
    return {
        "1": {"class_type": "HonestFaceModelLoader", "inputs": {
            "model": "honestface.safetensors", "base": "diffusers/stable-diffusion-2-1-base", "precision": precision}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
        "3": {"class_type": "HonestFaceRestoreCrops", "inputs": {"honestface_model": ["1", 0], "crops": ["2", 0],
                                                                "chunk_size": 0}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


def test_comfyui_validation_refuses_an_unknown_choice(comfy):
    """ComfyUI's own prompt validation (what /prompt runs) refuses precision="fp8" before anything executes, and
    accepts the same graph with a declared choice (so the refusal is about the value)."""
    ok, error, outputs, node_errors = _validate(comfy, _restore_prompt("fp8"))
    assert not ok and outputs == []
    errors = node_errors["1"]["errors"]
    assert [e["type"] for e in errors] == ["value_not_in_list"]
    assert errors[0]["extra_info"]["input_name"] == "precision" and "'fp8' not in" in errors[0]["details"]
    ok, error, outputs, node_errors = _validate(comfy, _restore_prompt("fp32"))
    assert ok and node_errors == {}, node_errors


@pytest.mark.parametrize("name, problem", BAD_NAMES)
def test_load_references_folder_names(comfy, name, problem):
    """The folder is checked before any model is used (no detector is connected here) and IS_CHANGED, which
    ComfyUI calls before running, does not raise."""
    node = comfy.pack_nodes["HonestFaceLoadReferences"]
    with pytest.raises(HonestFaceError) as err:
        comfy.run("HonestFaceLoadReferences", folder=name, top_k=0, crop_size=512)
    message = str(err.value)
    assert message.startswith("reference folder") and problem in message and len(message) < 600, message
    changed = node.IS_CHANGED(folder=name)
    assert changed != changed  # NaN: "always re-run", so load() reports the problem


@pytest.mark.parametrize("name, problem", BAD_NAMES + [("input/../../secret.safetensors", "contains '..'")])
def test_load_identity_set_names(comfy, name, problem):
    """A workflow file can hold any text for the identity_set choice."""
    node = comfy.pack_nodes["HonestFaceLoadIdentitySet"]
    with pytest.raises(HonestFaceError) as err:
        comfy.run("HonestFaceLoadIdentitySet", identity_set=name)
    assert str(err.value).startswith("Load Identity Set: identity_set") and problem in str(err.value)
    changed = node.IS_CHANGED(identity_set=name)
    assert changed != changed


@pytest.mark.parametrize("name, problem", BAD_NAMES)
def test_save_identity_set_prefixes(comfy, tmp_path, name, problem):
    """Nothing is written for a bad prefix, inside or outside the output directory."""
    from honestface_core.face.references import ReferenceSet

    out_dir = comfy.folder_paths.get_output_directory()
    before = sorted(os.walk(out_dir))
    refs = ReferenceSet(torch.rand(1, 64, 64, 3), torch.nn.functional.normalize(torch.randn(1, 8), dim=-1), ["a"],
                        ["a: ok"], "sface")
    with pytest.raises(HonestFaceError) as err:
        comfy.run("HonestFaceSaveIdentitySet", references=refs, filename_prefix=name)
    assert str(err.value).startswith("Save Identity Set: filename_prefix") and problem in str(err.value)
    assert sorted(os.walk(out_dir)) == before
