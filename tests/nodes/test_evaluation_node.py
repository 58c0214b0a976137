"""HonestFace Landmark Evaluation / Landmark Model Loader nodes inside a real ComfyUI (in-process and server)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from comfy_harness import load_api_workflow, output_files
from conftest import read_rgb
from honestface_core.errors import HonestFaceError

pytestmark = pytest.mark.comfy


@pytest.fixture(scope="module")
def comfy(comfy_inprocess):
    return comfy_inprocess


@pytest.fixture(scope="module")
def opencv(comfy):
    (models,) = comfy.run("HonestFaceOpenCVLoader", detector="face_detection_yunet_2023mar.onnx",
                          recognizer="face_recognition_sface_2021dec.onnx", score_threshold=0.6)
    return models


@pytest.fixture(scope="module")
def dlib(comfy):
    (lm,) = comfy.run("HonestFaceLandmarkLoader", model="dlib68")
    return lm


def _t(*imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs).astype(np.float32) / 255.0)


def _jpeg(img: np.ndarray, q: int) -> np.ndarray:
    ok, enc = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
    return np.ascontiguousarray(cv2.imdecode(enc, cv2.IMREAD_COLOR)[..., ::-1])


@pytest.fixture(scope="module")
def photos(photos_dir):
    obama = read_rgb(photos_dir / "obama.jpg")[:800, 50:850]
    return {"obama": obama, "obama_q30": _jpeg(obama, 30),
            "biden": cv2.resize(read_rgb(photos_dir / "biden.jpg")[250:1500], (800, 800), interpolation=cv2.INTER_AREA)}


def test_declarations(comfy):
    for name in ("HonestFaceLandmarkLoader", "HonestFaceLandmarkEvaluation"):
        cls = comfy.pack_nodes[name]
        assert cls.DESCRIPTION and cls.CATEGORY.startswith("HonestFace/")
        for section in ("required", "optional"):
            for inp, spec in cls.INPUT_TYPES().get(section, {}).items():
                assert spec[1].get("tooltip"), f"{name}.{inp}"


def test_detect_and_align_photos(comfy, opencv, dlib, photos):
    gray = np.full((800, 800, 3), 110, np.uint8)
    restored = _t(photos["obama_q30"], photos["biden"], gray)
    gt = _t(photos["obama"], photos["obama"], gray)
    out = comfy.run("HonestFaceLandmarkEvaluation", restored=restored, ground_truth=gt,
                    input_kind="detect and align (ground truth's face)", insightface_scheme="ins106 (2d106det)",
                    landmark_model=dlib, opencv=opencv, references=_t(photos["obama"]))
    l2, ald, ald_e, ald_m, deg, ref_deg, text, overlay = out["result"]
    assert out["ui"]["text"] == [text]
    report = json.loads(text)
    assert report["scheme"] == "dlib68" and report["identity_encoder"] == "sface"
    assert report["no_face_images"] == [2]  # counted, never dropped
    per = report["per_image"]
    assert per["ALD (ours)"][2] is None and per["ALD (ours)"][0] < 3.0
    assert per["Deg."][1] > per["Deg."][0] + 20 and per["Ref-Deg"][0] < per["Ref-Deg"][1]
    assert overlay.shape == (3, 512, 512, 3) and 0 <= overlay.min() and overlay.max() <= 1
    assert all(isinstance(v, float) for v in (l2, ald, ald_e, ald_m, deg, ref_deg)) and ref_deg >= 0
    # the FLOAT outputs are the report's means (the core's report builder), over the images with a face
    assert [l2, ald, ald_e, ald_m, deg, ref_deg] == [report["mean"][c] for c in ("L2-LD", "ALD (ours)", "ALD-e (ours)",
                                                                                 "ALD-m (ours)", "Deg.", "Ref-Deg")]
    assert deg == pytest.approx(np.mean(per["Deg."][:2]), abs=1e-6)
    # the overlay draws points where landmarks were found (green/red pixels appear), none on the no-face image
    assert (overlay[0] - restored.new_zeros(1)).abs().sum() > 0
    green = (overlay[..., 1] > 0.95) & (overlay[..., 0] < 0.05) & (overlay[..., 2] < 0.05)
    assert green[0].sum() > 50 and green[2].sum() == 0


def test_aligned_crops_and_random_weight_loaders(comfy, test_models_dir):
    """AWing from the random-weight facexlib file and insightface 106/68 from the random pack load and run
    through the node's real paths (outputs are meaningless: only shapes are checked)."""
    (awing,) = comfy.run("HonestFaceLandmarkLoader", model="wflw98")
    crops = torch.rand(1, 256, 256, 3)
    out = comfy.run("HonestFaceLandmarkEvaluation", restored=crops, ground_truth=crops.flip(1),
                    input_kind="aligned crops", insightface_scheme="ins106 (2d106det)", landmark_model=awing)
    report = json.loads(out["result"][6])
    assert report["scheme"] == "wflw98" and len(report["per_image"]["ALD (ours)"]) == 1
    assert out["result"][4] == -1.0 and out["result"][7].shape == (1, 512, 512, 3)  # no identity model: Deg -1

    from honestface_core.files.insightface_models import load_face_analysis
    from honestface_core.face.landmarks import InsightFaceLandmarks

    app = load_face_analysis(test_models_dir, "buffalo_l", allowed_modules=("detection", "landmark_2d_106", "landmark_3d_68"))
    for scheme, n in (("ins106", 106), ("ins68", 68)):
        lm = InsightFaceLandmarks(app, scheme).detect(crops)
        assert lm.points.shape == (1, n, 2) and lm.scheme == scheme


def test_bad_input(comfy, dlib):
    node = comfy.node("HonestFaceLandmarkEvaluation")
    with pytest.raises(HonestFaceError, match="2 restored and 1 ground-truth"):
        node.evaluate(torch.rand(2, 64, 64, 3), torch.rand(1, 64, 64, 3), "aligned crops", "ins106 (2d106det)", landmark_model=dlib)
    with pytest.raises(HonestFaceError, match="no landmark source"):
        node.evaluate(torch.rand(1, 64, 64, 3), torch.rand(1, 64, 64, 3), "aligned crops", "ins106 (2d106det)")
    with pytest.raises(HonestFaceError, match="needs a face detector"):
        node.evaluate(torch.rand(1, 64, 64, 3), torch.rand(1, 64, 64, 3), "detect and align (ground truth's face)",
                      "ins106 (2d106det)", landmark_model=dlib)
    with pytest.raises(HonestFaceError, match="not square crops"):
        node.evaluate(torch.rand(1, 64, 80, 3), torch.rand(1, 64, 80, 3), "aligned crops", "ins106 (2d106det)", landmark_model=dlib)


@pytest.mark.opencv  # the evaluate_landmarks workflow (YuNet + SFace) is also run under OpenCV 5
def test_example_workflow_runs_in_server(comfy_server, photos_dir):
    from PIL import Image

    obama = read_rgb(photos_dir / "obama.jpg")[:800, 50:850]
    Image.fromarray(_jpeg(obama, 30)).save(comfy_server.input_dir / "restored.png")
    Image.fromarray(obama).save(comfy_server.input_dir / "ground_truth.png")
    prompt = load_api_workflow("Evaluate a restoration.json")
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    node_out = entry["outputs"]["5"]
    report = json.loads(node_out["text"][0])
    assert report["no_face_images"] == [] and report["mean"]["ALD (ours)"] < 3.0
    saved = output_files(entry, comfy_server.output_dir)
    assert len(saved) == 1 and Image.open(saved[0]).size == (512, 512)


def test_ui_workflow_matches_api_twin():
    from comfy_harness import WORKFLOWS

    ui = json.loads((WORKFLOWS / "Evaluate a restoration.json").read_text())
    api = load_api_workflow("Evaluate a restoration.json")
    assert "null" not in (WORKFLOWS / "Evaluate a restoration.json").read_text()
    assert {str(n["id"]): n["type"] for n in ui["nodes"]} == {k: v["class_type"] for k, v in api.items()}
    for link_id, src, src_slot, dst, dst_slot, _ in ui["links"]:
        dst_node = next(n for n in ui["nodes"] if n["id"] == dst)
        name = dst_node["inputs"][dst_slot]["name"]
        assert dst_node["inputs"][dst_slot]["link"] == link_id
        assert api[str(dst)]["inputs"][name] == [str(src), src_slot]
    assert (WORKFLOWS / "Evaluate a restoration.jpg").is_file()


def test_sizes_differ_detect_and_align(comfy, opencv, dlib, photos):
    """'detect and align': the ground truth's face transform aligns the restored image too. A uniform rescale of
    the same frame (a restorer's 2x output, or half size) is resized to the ground truth and reported; a different
    aspect ratio would misalign every landmark and is refused, naming both sizes."""
    node = comfy.node("HonestFaceLandmarkEvaluation")
    kind = "detect and align (ground truth's face)"
    gt = _t(photos["obama"])  # 800x800
    half = _t(cv2.resize(photos["obama_q30"], (400, 400), interpolation=cv2.INTER_AREA))
    report = json.loads(node.evaluate(half, gt, kind, "ins106 (2d106det)", landmark_model=dlib, opencv=opencv)["result"][6])
    assert report["notes"] == ["restored 400x400 resized to the ground truth's 800x800"]
    assert report["no_face_images"] == [] and report["per_image"]["L2-LD"][0] < 4.0
    for restored in (torch.rand(1, 800, 600, 3), torch.rand(1, 512, 800, 3), torch.rand(1, 403, 400, 3)):
        h, w = restored.shape[1:3]
        with pytest.raises(HonestFaceError, match=f"restored images are {w}x{h} and ground-truth images 800x800: not "
                                                  "the same frame"):
            node.evaluate(restored, gt, kind, "ins106 (2d106det)", landmark_model=dlib, opencv=opencv)


def test_sizes_differ_aligned_crops(comfy, dlib, photos):
    """'aligned crops' of different sizes are each rescaled to 512 (landmarks in 512-crop pixels), and the report
    says so: the same face at 256 and 512 lands on the same 512 coordinates."""
    node = comfy.node("HonestFaceLandmarkEvaluation")
    gt = cv2.resize(photos["obama"], (512, 512), interpolation=cv2.INTER_AREA)
    restored = cv2.resize(photos["obama_q30"], (256, 256), interpolation=cv2.INTER_AREA)
    out = node.evaluate(_t(restored), _t(gt), "aligned crops", "ins106 (2d106det)", landmark_model=dlib)
    report = json.loads(out["result"][6])
    assert report["notes"] == ["restored crops 256x256 rescaled to 512x512"]
    assert report["per_image"]["L2-LD"][0] < 4.0  # a 256-pixel frame read as 512 pixels would be ~100 px off
