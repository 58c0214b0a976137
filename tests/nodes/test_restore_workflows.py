"""The restore example workflows in a real ComfyUI server (CPU) with the tiny random-weight models.

The restored faces are noise-like (random weights); the tests check that the graphs run, that the output has the
input's size and that every pixel away from the pasted faces is the input's. A workflow saved before Restore Faces
gained its optional inputs (tests/nodes/saved_workflows/, as committed at 0e1bab0) must still run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from comfy_harness import WORKFLOWS, face_change, load_api_workflow, output_files
from conftest import read_rgb, side_by_side

pytestmark = pytest.mark.comfy
SAVED = Path(__file__).parent / "saved_workflows"
EXAMPLES = ("Restore faces (blind)", "Restore faces with reference photos", "Restore a group photo")


def _check_only_face_changed(out: np.ndarray, src: np.ndarray) -> None:
    diff, far, inner = face_change(out, src, pad=0.8)
    assert far.sum() > 0.3 * far.size and diff[far].max() == 0  # away from the face: the input, exactly
    assert inner.mean() > 1  # the (noise-like) restored face was pasted


def _run(server, prompt: dict, prefix: str) -> np.ndarray:
    entry = server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
    saved = [p for p in output_files(entry, server.output_dir) if prefix in p.name]
    assert len(saved) == 1
    return np.asarray(Image.open(saved[0]).convert("RGB"))


def test_workflow_files_are_twins():
    for folder, name in [(WORKFLOWS, n) for n in EXAMPLES] + [(SAVED, "Restore faces (blind)")]:
        ui = json.loads((folder / f"{name}.json").read_text())
        api = json.loads((folder / "api" / f"{name}.json").read_text())
        assert folder == SAVED or (WORKFLOWS / f"{name}.jpg").is_file()
        assert {str(n["id"]) for n in ui["nodes"]} == set(api)
        assert {n["type"] for n in ui["nodes"]} == {v["class_type"] for v in api.values()}
        assert ui["last_link_id"] == len(ui["links"]) and "null" not in json.dumps(ui).replace('"link": null', "")
        for node in ui["nodes"]:  # every link the UI file draws is an input of its API twin, and no other
            ui_links = {s["name"]: [str(link[1]), link[2]] for s in node["inputs"] if s.get("link") is not None
                        for link in ui["links"] if link[0] == s["link"]}
            api_links = {k: v for k, v in api[str(node["id"])]["inputs"].items() if isinstance(v, list)}
            assert ui_links == api_links, (name, node["type"])
        restore = [n for n in ui["nodes"] if n["type"] == "HonestFaceRestoreFaces"]
        if folder == WORKFLOWS:  # the current Restore Faces: every widget value, and the honesty maps previewed
            (node,) = restore
            widgets = {k: v for k, v in api[str(node["id"])]["inputs"].items() if not isinstance(v, list)}
            assert list(widgets.values()) == node["widgets_values"] and len(widgets) == 10
            assert [o["name"] for o in node["outputs"]][3:] == ["mask", "honesty_maps", "report"]
            previews = [n for n in ui["nodes"] if n.get("title") == "Honesty maps"]
            assert [api[str(n["id"])]["inputs"]["images"] for n in previews] == [[str(node["id"]), 4]]


def test_blind_restore_workflow(comfy_server, astronaut):
    Image.fromarray(astronaut).save(comfy_server.input_dir / "astronaut.png")
    out = _run(comfy_server, load_api_workflow("Restore faces (blind).json"), "blind_restore")
    _check_only_face_changed(out, astronaut)


def test_restore_with_references_workflow(comfy_server, astronaut, photos_dir, test_models_dir, yunet_path):
    """The references come from an identity set made with the model's own ArcFace backbone: the random-weight
    insightface detector of the test models cannot find the reference faces, so the graph's insightface parts
    are swapped for the identity-set loader and the (real) OpenCV YuNet detector."""
    from honestface_core.face.detection import YuNetDetector
    from honestface_core.model.loading import load_restorer
    from honestface_core.pipeline import BackboneIdentityEncoder
    from honestface_core.face.references import prepare_references, save_identity_set

    model = load_restorer(test_models_dir, device="cpu", dtype="fp32")
    photos = [(n, read_rgb(photos_dir / n)) for n in ("obama.jpg", "obama2.jpg")]
    refs = prepare_references(photos, YuNetDetector(yunet_path), BackboneIdentityEncoder(model))
    save_identity_set(refs, comfy_server.input_dir / "person.safetensors", overwrite=True)
    Image.fromarray(astronaut).save(comfy_server.input_dir / "astronaut.png")

    prompt = load_api_workflow("Restore faces with reference photos.json")
    restore = next(k for k, v in prompt.items() if v["class_type"] == "HonestFaceRestoreFaces")
    loader = next(k for k, v in prompt.items() if v["class_type"] == "HonestFaceInsightFaceLoader")
    ref_node = next(k for k, v in prompt.items() if v["class_type"] == "HonestFaceLoadReferences")
    assert prompt[restore]["inputs"]["references"] == [ref_node, 0]
    del prompt[loader], prompt[restore]["inputs"]["insightface"]
    prompt[ref_node] = {"class_type": "HonestFaceLoadIdentitySet", "inputs": {"identity_set": "input/person.safetensors"}}
    prompt["99"] = {"class_type": "HonestFaceOpenCVLoader", "inputs": {
        "detector": "face_detection_yunet_2023mar.onnx", "recognizer": "none", "score_threshold": 0.6}}
    prompt[restore]["inputs"]["opencv"] = ["99", 0]
    with_refs = _run(comfy_server, prompt, "restore_with_references")
    _check_only_face_changed(with_refs, astronaut)
    blind = _run(comfy_server, load_api_workflow("Restore faces (blind).json"), "blind_restore")
    assert np.abs(with_refs.astype(int) - blind.astype(int)).max() > 0  # the references changed the result


def test_workflow_saved_before_the_new_inputs_still_runs(comfy_server, astronaut):
    """The blind workflow as saved before Restore Faces gained strength ... landmark_model and its mask /
    honesty_maps / report outputs: the missing inputs take their defaults (the report is on)."""
    prompt = json.loads((SAVED / "api" / "Restore faces (blind).json").read_text())
    restore = next(k for k, v in prompt.items() if v["class_type"] == "HonestFaceRestoreFaces")
    assert set(prompt[restore]["inputs"]) == {"faces", "mask", "color_correction", "chunk_size", "honestface_model",
                                              "image", "opencv"}
    Image.fromarray(astronaut).save(comfy_server.input_dir / "astronaut.png")
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", (entry["status"], comfy_server.log_tail())
    saved = [p for p in output_files(entry, comfy_server.output_dir) if "blind_restore" in p.name]
    assert len(saved) == 1
    _check_only_face_changed(np.asarray(Image.open(saved[0]).convert("RGB")), astronaut)
    assert re.search(r"^face 0: Ref-Deg", entry["outputs"][restore]["text"][0], re.M)


def test_group_photo_workflow(comfy_server, photos_dir, test_models_dir, yunet_path, sface_path):
    """Obama | Biden side by side. As in test_restore_with_references_workflow the insightface parts are swapped
    (the test pack's random detector finds no face): each person's Load References becomes an identity set made
    with the model's backbone (Biden's from his photo mirrored and rescaled, the only one we have), and the real
    YuNet + SFace match the faces to the people, whose names are given in the opposite order."""
    from honestface_core.face.detection import YuNetDetector
    from honestface_core.face.references import prepare_references, save_identity_set
    from honestface_core.model.loading import load_restorer
    from honestface_core.pipeline import BackboneIdentityEncoder

    model = load_restorer(test_models_dir, device="cpu", dtype="fp32")
    detector, backbone = YuNetDetector(yunet_path), BackboneIdentityEncoder(model)
    obama, biden = read_rgb(photos_dir / "obama.jpg"), read_rgb(photos_dir / "biden.jpg")
    people = {"Biden": [("biden mirrored", np.ascontiguousarray(cv2.resize(biden[:, ::-1], None, fx=0.7, fy=0.7)))],
              "Obama": [(n, read_rgb(photos_dir / n)) for n in ("obama2.jpg", "obama3.jpg")]}
    for name, photos in people.items():
        save_identity_set(prepare_references(photos, detector, backbone), comfy_server.input_dir / f"{name}.safetensors",
                          overwrite=True)
    group = side_by_side(obama, biden)
    Image.fromarray(group).save(comfy_server.input_dir / "group_photo.png")

    prompt = load_api_workflow("Restore a group photo.json")
    kind = lambda t: [k for k, v in prompt.items() if v["class_type"] == t]  # noqa: E731
    (restore,), (loader,), (library,) = kind("HonestFaceRestoreFaces"), kind("HonestFaceInsightFaceLoader"), kind("HonestFaceIdentityLibrary")
    refs = kind("HonestFaceLoadReferences")
    assert [prompt[library]["inputs"][f"references_{i}"] for i in (1, 2)] == [[r, 0] for r in refs]
    assert prompt[restore]["inputs"]["identity_library"] == [library, 0]
    del prompt[loader], prompt[restore]["inputs"]["insightface"]
    for i, (ref, name) in enumerate(zip(refs, people), start=1):
        prompt[ref] = {"class_type": "HonestFaceLoadIdentitySet", "inputs": {"identity_set": f"input/{name}.safetensors"}}
        prompt[library]["inputs"][f"name_{i}"] = name
    prompt["99"] = {"class_type": "HonestFaceOpenCVLoader", "inputs": {
        "detector": "face_detection_yunet_2023mar.onnx", "recognizer": "face_recognition_sface_2021dec.onnx",
        "score_threshold": 0.6}}
    prompt[restore]["inputs"]["opencv"] = ["99", 0]
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", (entry["status"], comfy_server.log_tail())
    saved = [p for p in output_files(entry, comfy_server.output_dir) if "restore_group" in p.name]
    assert len(saved) == 1
    out = np.asarray(Image.open(saved[0]).convert("RGB"))

    assert out.shape == group.shape
    diff = np.abs(out.astype(int) - group.astype(int)).max(-1)
    far = np.ones_like(diff, dtype=bool)
    boxes = sorted((f.box for f in detector.detect(group)), key=lambda b: b[0])
    assert len(boxes) == 2
    for x1, y1, x2, y2 in boxes:
        margin = 0.8 * max(x2 - x1, y2 - y1)
        far[max(0, int(y1 - margin)):int(y2 + margin), max(0, int(x1 - margin)):int(x2 + margin)] = False
        assert diff[int(y1):int(y2), int(x1):int(x2)].mean() > 1  # each (noise-like) restored face was pasted
    assert far.sum() > 0.2 * far.size and diff[far].max() == 0  # away from the faces: the input, exactly

    text = entry["outputs"][restore]["text"][0]
    print(text)
    lines = text.splitlines()
    assert lines[0].startswith("restored 2 face(s) (2 per image), identity library of 2")
    assert [re.sub(r" \(similarity -?[0-9.]+\)$", "", line) for line in lines[1:3]] == ["face 0: Obama", "face 1: Biden"]
    honesty = [line for line in lines if re.match(r"face \d+: Ref-Deg", line)]
    assert [re.match(r"face (\d+): Ref-Deg \d+\.\d, input Deg", line)[1] for line in honesty] == ["0", "1"]
    maps = next(k for k, v in prompt.items() if v.get("_meta", {}).get("title") == "Honesty maps")
    mask = next(k for k, v in prompt.items() if v["class_type"] == "PreviewImage" and v["inputs"]["images"][0] in kind("MaskToImage"))
    assert len(entry["outputs"][maps]["images"]) == 2 and len(entry["outputs"][mask]["images"]) == 1


def test_loader_and_restore_crops_nodes_in_process(comfy_inprocess, astronaut):
    """The model loader's choices, the ModelPatcher wrapping and the crops node (blind, chunked)."""
    import torch

    comfy = comfy_inprocess
    loader = comfy.pack_nodes["HonestFaceModelLoader"]
    required = loader.INPUT_TYPES()["required"]
    assert "honestface.safetensors" in required["model"][0]
    assert {"diffusers/stable-diffusion-2-1-base", "checkpoints/v2-1_512-ema-pruned.safetensors"} <= set(required["base"][0])
    for base in ("diffusers/stable-diffusion-2-1-base", "checkpoints/v2-1_512-ema-pruned.safetensors"):
        (patcher,) = comfy.run("HonestFaceModelLoader", model="honestface.safetensors", base=base, precision="auto")
        assert patcher.model.honestface.backbone is not None and patcher.size > 0
    crops = torch.from_numpy(np.stack([astronaut[:512, :512], astronaut[::-1, ::-1][:512, :512]]).astype(np.float32) / 255)
    crops = torch.nn.functional.interpolate(crops.permute(0, 3, 1, 2), size=(128, 128), mode="area").permute(0, 2, 3, 1)
    (one_batch,) = comfy.run("HonestFaceRestoreCrops", honestface_model=patcher, crops=crops, chunk_size=0)
    (chunked,) = comfy.run("HonestFaceRestoreCrops", honestface_model=patcher, crops=crops, chunk_size=1)
    assert one_batch.shape == crops.shape and (one_batch - crops).abs().mean() > 0.01
    assert (one_batch - chunked).abs().mean() < 2e-4
