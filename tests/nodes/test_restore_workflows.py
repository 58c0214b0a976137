"""The restore example workflows in a real ComfyUI server (CPU) with the tiny random-weight models.

The restored faces are noise-like (random weights); the tests check that the graphs run, that the output has the
input's size and that every pixel away from the pasted face is the input's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from comfy_harness import WORKFLOWS, face_change, load_api_workflow, output_files
from conftest import read_rgb

pytestmark = pytest.mark.comfy


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
    for name in ("Restore faces (blind)", "Restore faces with reference photos"):
        ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
        api = load_api_workflow(f"{name}.json")
        assert (WORKFLOWS / f"{name}.jpg").is_file()
        assert {str(n["id"]) for n in ui["nodes"]} == set(api)
        assert {n["type"] for n in ui["nodes"]} == {v["class_type"] for v in api.values()}
        assert ui["last_link_id"] == len(ui["links"]) and "null" not in json.dumps(ui).replace('"link": null', "")


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
