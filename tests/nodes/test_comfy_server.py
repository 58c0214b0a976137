"""The pack in a real ComfyUI server (CPU): /object_info and the example workflow through /prompt and /history."""

from __future__ import annotations

import ast
import shutil

import numpy as np
import pytest
from PIL import Image, ImageOps

from comfy_harness import PACK_NAME, REPO, face_change, load_api_workflow, output_files

pytestmark = pytest.mark.comfy


def pack_node_names() -> set[str]:
    """The node id of every ``@node("id", ...)`` class decorator in nodes/*.py (read from the source)."""
    names = set()
    for path in (REPO / "nodes").glob("*.py"):
        for cls in ast.walk(ast.parse(path.read_text())):
            if isinstance(cls, ast.ClassDef):
                names.update(d.args[0].value for d in cls.decorator_list if isinstance(d, ast.Call)
                             and isinstance(d.func, ast.Name) and d.func.id == "node")
    return names


def test_object_info_lists_every_node(comfy_server):
    info = comfy_server.get("/object_info")
    expected = pack_node_names()
    assert {"HonestFaceDetectFaces", "HonestFacePasteFacesBack", "HonestFaceOpenCVLoader"} <= expected
    ours = {name for name, d in info.items() if d.get("python_module") == f"custom_nodes.{PACK_NAME}"}
    assert ours == expected, comfy_server.log_tail()
    for name in expected:
        d = info[name]
        assert d["category"].startswith("HonestFace/") and d["description"], name
        for section in ("required", "optional"):
            for inp, spec in d["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{inp}"
    # the loader lists the packs found through the user's extra_model_paths.yaml
    packs = info["HonestFaceInsightFaceLoader"]["input"]["required"]["model_name"][0]
    assert {"antelopev2", "buffalo_l"} <= set(packs)


def _read_like_load_image(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))


def test_face_detect_paste_workflow(comfy_server, photos_dir):
    shutil.copy(photos_dir / "obama.jpg", comfy_server.input_dir / "obama.jpg")
    prompt = load_api_workflow("Detect faces and paste back.json")
    prompt["1"]["inputs"]["image"] = "obama.jpg"
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    saved = [p for p in output_files(entry, comfy_server.output_dir) if "face_detect_paste" in p.name]
    assert len(saved) == 1 and saved[0].is_file()

    src = _read_like_load_image(comfy_server.input_dir / "obama.jpg")
    diff, far, inner = face_change(np.asarray(Image.open(saved[0]).convert("RGB")), src, pad=0.6)
    assert diff[far].max() == 0  # outside the face and its seam band: the input, exactly
    assert inner.mean() < 3 and diff.any()  # the unchanged crop was pasted back (resampled) over the face


def test_bad_input_reaches_the_ui_as_a_clear_error(comfy_server, photos_dir):
    shutil.copy(photos_dir / "obama.jpg", comfy_server.input_dir / "obama.jpg")
    prompt = load_api_workflow("Detect faces and paste back.json")
    prompt["1"]["inputs"]["image"] = "obama.jpg"
    prompt["3"]["inputs"]["faces"] = "the left one"
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_id"] == "3"
    assert "face selection" in errors[0]["exception_message"] and "'all', 'largest'" in errors[0]["exception_message"]
