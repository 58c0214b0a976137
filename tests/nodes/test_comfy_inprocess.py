"""The pack inside a real ComfyUI (in-process, CPU): loading, declarations, model folders, nodes on real photos."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from comfy_harness import WORKFLOWS
from conftest import read_rgb

pytestmark = pytest.mark.comfy

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@pytest.fixture(scope="module")
def comfy(comfy_inprocess):
    return comfy_inprocess


def _small(img: np.ndarray, side: int = 640) -> np.ndarray:
    import cv2

    scale = side / max(img.shape[:2])
    return cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)


def _tensor(*imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs).astype(np.float32) / 255.0)


@pytest.fixture(scope="module")
def opencv(comfy):
    (models,) = comfy.run("HonestFaceOpenCVLoader", detector="face_detection_yunet_2023mar.onnx",
                          recognizer="face_recognition_sface_2021dec.onnx", score_threshold=0.6)
    return models


def _input_specs(cls):
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            yield section, name, entry


def test_pack_loads_every_node(comfy):
    expected = {"HonestFaceInsightFaceLoader", "HonestFaceFacexlibLoader", "HonestFaceOpenCVLoader",
                "HonestFaceDetectFaces", "HonestFaceIdentitySimilarity", "HonestFaceLoadReferences",
                "HonestFaceSaveIdentitySet", "HonestFaceLoadIdentitySet", "HonestFacePasteFacesBack"}
    assert expected <= set(comfy.pack_nodes)
    for name in comfy.pack_nodes:
        assert comfy.nodes.NODE_CLASS_MAPPINGS[name] is comfy.pack_nodes[name]
        assert name in comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS
    assert set(vars(comfy.pack)) >= {"NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"}


def test_every_node_is_declared_for_the_ui(comfy):
    for name, cls in comfy.pack_nodes.items():
        assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40, name
        assert cls.CATEGORY.startswith("HonestFace/"), name
        assert callable(getattr(cls, cls.FUNCTION)), name
        assert isinstance(cls.RETURN_TYPES, tuple), name
        if getattr(cls, "RETURN_NAMES", None):
            assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES), name
        if getattr(cls, "OUTPUT_TOOLTIPS", None):
            assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES), name
        specs = list(_input_specs(cls))
        assert specs, name
        for section, inp, entry in specs:
            assert len(entry) == 2 and entry[1].get("tooltip"), f"{name}.{inp} has no tooltip"
            if inp == "insightface":
                assert entry[0] == "FACEANALYSIS,INSIGHTFACE,FACE_ANALYSIS", name
        # the function accepts exactly the declared inputs
        import inspect

        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        assert {inp for _, inp, _ in specs} == set(params) - {"self"}, name


def test_model_folders_merge_with_user_paths(comfy, test_models_dir):
    fp = comfy.folder_paths
    default_models = comfy.base_dir / "models"
    for folder, ext in (("insightface", ".onnx"), ("facexlib", ".pth"), ("facedetection", ".onnx"),
                        ("honestface", ".safetensors")):
        paths, exts = fp.folder_names_and_paths[folder]
        # the user's path (extra_model_paths.yaml, applied before the pack loaded) is kept, and first
        assert paths[0] == str(test_models_dir.resolve() / folder), folder
        assert str(default_models / folder) in paths, folder
        assert ext in exts, folder
    # re-registering (e.g. another pack with the same folder) neither duplicates nor drops anything
    from importlib import import_module

    model_folders = import_module(comfy.pack.__name__ + ".nodes.model_folders")
    saved = {k: (list(v[0]), set(v[1])) for k, v in fp.folder_names_and_paths.items()}
    try:
        fp.folder_names_and_paths["facedetection"] = (["/elsewhere/facedetection"], {".bin"})
        model_folders.register_model_folders()
        model_folders.register_model_folders()
        paths, exts = fp.folder_names_and_paths["facedetection"]
        assert paths == ["/elsewhere/facedetection", str(default_models / "facedetection")]
        assert exts == {".bin", ".onnx"}
        assert fp.folder_names_and_paths["checkpoints"][0] == saved["checkpoints"][0]
    finally:
        fp.folder_names_and_paths.update(saved)


def test_loader_lists_models_from_user_folder(comfy):
    packs = comfy.pack_nodes["HonestFaceInsightFaceLoader"].INPUT_TYPES()["required"]["model_name"][0]
    assert {"antelopev2", "buffalo_l"} <= set(packs)
    (fa,) = comfy.run("HonestFaceInsightFaceLoader", model_name="buffalo_l", provider="auto", det_size=320)
    assert "recognition" in fa.models and "detection" in fa.models  # random weights: loading path only
    (fx,) = comfy.run("HonestFaceFacexlibLoader", detector="none", parser="parsenet")
    assert fx.detector is None and fx.parser is not None
    (fx2,) = comfy.run("HonestFaceFacexlibLoader", detector="retinaface_mobilenet0.25", parser="none")
    assert fx2.detector is not None and fx2.parser is None
    # a parsing mask from the (random-weight) parser has the crops' shape and stays in [0, 1]
    crops = torch.rand(2, 64, 64, 3)
    from importlib import import_module

    masks = import_module(comfy.pack.__name__ + ".nodes.detection").face_masks(None, fx, crops)
    assert masks.shape == (2, 64, 64) and 0 <= float(masks.min()) and float(masks.max()) <= 1


def test_detect_and_paste_back_real_photos(comfy, opencv, astronaut, caplog):
    blank = np.full_like(astronaut, 128)
    images = _tensor(astronaut, blank)
    with caplog.at_level(logging.WARNING):
        crops, masks, faces = comfy.run("HonestFaceDetectFaces", image=images, faces="all", crop_size=256, opencv=opencv)
    assert crops.shape == (1, 256, 256, 3) and masks.shape == (1, 256, 256)
    assert faces.image_index.tolist() == [0]
    assert "no face found in image(s) 1" in caplog.text
    (out,) = comfy.run("HonestFacePasteFacesBack", image=images, faces=faces, crops=crops, mask="auto",
                       color_correction="none")
    assert out.shape == images.shape
    assert torch.equal(out[1], images[1])  # no face: unchanged
    diff = (out[0] - images[0]).abs().amax(-1)
    x1, y1, x2, y2 = faces.faces[0].box
    far = torch.ones_like(diff, dtype=torch.bool)
    pad = 0.6 * max(x2 - x1, y2 - y1)  # the 512 FFHQ crop spans about twice the detector box
    far[max(0, int(y1 - pad)):int(y2 + pad), max(0, int(x1 - pad)):int(x2 + pad)] = False
    assert diff[far].max() == 0  # pixels away from the face are untouched
    assert diff.mean() < 0.01  # unchanged crops paste back almost exactly (resampling only)
    (out2,) = comfy.run("HonestFacePasteFacesBack", image=images, faces=faces, crops=crops, mask="feathered",
                        color_correction="adain")
    assert out2.shape == images.shape


def test_batch_without_any_face_passes_through(comfy, opencv):
    images = torch.full((2, 96, 128, 3), 0.4)
    crops, masks, faces = comfy.run("HonestFaceDetectFaces", image=images, faces="all", crop_size=128, opencv=opencv)
    assert crops.shape == (0, 128, 128, 3) and masks.shape == (0, 128, 128) and len(faces.faces) == 0
    (out,) = comfy.run("HonestFacePasteFacesBack", image=images, faces=faces, crops=crops, mask="auto",
                       color_correction="wavelet")
    assert torch.equal(out, images)


def test_face_selection(comfy, opencv, group_photo):
    img = _tensor(_small(group_photo, 800))
    counts = {sel: len(comfy.run("HonestFaceDetectFaces", image=img, faces=sel, crop_size=128, opencv=opencv)[0])
              for sel in ("all", "largest", "0,2")}
    assert counts["all"] >= 5 and counts["largest"] == 1 and counts["0,2"] == 2


def test_missing_or_ambiguous_detector_is_a_clear_error(comfy, opencv, astronaut):
    from honestface_core.errors import HonestFaceError

    with pytest.raises(HonestFaceError, match="Connect one loader"):
        comfy.run("HonestFaceDetectFaces", image=_tensor(astronaut), faces="all", crop_size=128)
    fa = comfy.run("HonestFaceInsightFaceLoader", model_name="antelopev2", provider="CPU", det_size=320)[0]
    with pytest.raises(HonestFaceError, match="both connected"):
        comfy.run("HonestFaceDetectFaces", image=_tensor(astronaut), faces="all", crop_size=128, opencv=opencv,
                  insightface=fa)
    with pytest.raises(HonestFaceError, match="face selection"):
        comfy.run("HonestFaceDetectFaces", image=_tensor(astronaut), faces="left", crop_size=128, opencv=opencv)


def _crops_of(comfy, opencv, photos_dir, names):
    crops = [comfy.run("HonestFaceDetectFaces", image=_tensor(_small(read_rgb(photos_dir / n))), faces="largest",
                       crop_size=160, opencv=opencv)[0] for n in names]
    return torch.cat(crops)


def test_identity_similarity_same_person_closer(comfy, opencv, photos_dir):
    crops = _crops_of(comfy, opencv, photos_dir, ["obama.jpg", "obama2.jpg", "biden.jpg"])
    result = comfy.run("HonestFaceIdentitySimilarity", images=crops, input_kind="aligned crops", opencv=opencv)
    report, mean_sim, mean_deg = result["result"]
    deg = np.array(json.loads(report)["deg"])
    assert deg.shape == (3, 3) and abs(deg[0, 0]) < 1e-2
    assert deg[0, 1] < deg[0, 2] and deg[0, 1] < deg[1, 2]  # obama-obama2 closer than either to biden
    assert 0 < mean_deg < 90 and -1 <= mean_sim <= 1
    # photos instead of crops: the largest face is found; a face-less image is reported, not dropped silently
    a = _tensor(_small(read_rgb(photos_dir / "obama.jpg"), 512)[:480, :384])
    b = torch.cat([a, torch.full_like(a, 0.5)])
    report2 = json.loads(comfy.run("HonestFaceIdentitySimilarity", images=a, input_kind="detect largest face",
                                   images_b=b, opencv=opencv)["result"][0])
    assert report2["no_face_images_b"] == [1] and report2["columns"] == [0]
    assert report2["deg"][0][0] < 1.0


def test_references_folder_topk_and_identity_sets(comfy, opencv, photos_dir, astronaut):
    import cv2

    refs_dir = comfy.base_dir / "input" / "refs_person"
    refs_dir.mkdir()
    for n in ("obama.jpg", "obama2.jpg", "biden.jpg"):
        cv2.imwrite(str(refs_dir / n), cv2.cvtColor(_small(read_rgb(photos_dir / n)), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(refs_dir / "zz_blank.png"), np.full((200, 200, 3), 90, np.uint8))
    target = _tensor(_small(read_rgb(photos_dir / "obama3.jpg")))
    node = comfy.pack_nodes["HonestFaceLoadReferences"]
    before = node.IS_CHANGED(folder="refs_person", top_k=2)
    out = comfy.run("HonestFaceLoadReferences", folder="refs_person", top_k=2, crop_size=128, target=target, opencv=opencv)
    (refs, preview, status), shown = out["result"], out["ui"]["text"]  # the status is also shown on the node
    assert shown == [status]
    assert refs.names == ["obama.jpg", "obama2.jpg"] and preview.shape == (2, 128, 128, 3)
    assert "biden.jpg: skipped: not in top 2" in status and "zz_blank.png: skipped: no face found" in status
    assert node.IS_CHANGED(folder="refs_person") == before
    (refs_dir / "zz_blank.png").unlink()
    assert node.IS_CHANGED(folder="refs_person") != before  # a changed folder is re-read, not served from cache
    # batch + folder together, no top-k
    refs_all, _, _ = comfy.run("HonestFaceLoadReferences", folder="refs_person", top_k=0, crop_size=128,
                               images=_tensor(astronaut), opencv=opencv)["result"]
    assert refs_all.names == ["image 0", "biden.jpg", "obama.jpg", "obama2.jpg"]
    from honestface_core.errors import HonestFaceError

    with pytest.raises(HonestFaceError, match="outside the input directory"):
        comfy.run("HonestFaceLoadReferences", folder="../..", top_k=0, crop_size=128, opencv=opencv)

    # save twice: never overwrites; then load from the input directory
    out_dir = comfy.base_dir / "output"
    ui1 = comfy.run("HonestFaceSaveIdentitySet", references=refs, filename_prefix="ids/person")
    first = sorted((out_dir / "ids").glob("person_*.safetensors"))
    first_bytes = first[0].read_bytes()
    comfy.run("HonestFaceSaveIdentitySet", references=refs_all, filename_prefix="ids/person")
    files = sorted((out_dir / "ids").glob("person_*.safetensors"))
    assert len(files) == 2 and files[0].read_bytes() == first_bytes and "saved 2 references" in ui1["ui"]["text"][0]
    shutil.copy(files[0], comfy.base_dir / "input" / "person.safetensors")
    choices = comfy.pack_nodes["HonestFaceLoadIdentitySet"].INPUT_TYPES()["required"]["identity_set"][0]
    assert "input/person.safetensors" in choices
    loaded, crops, status2 = comfy.run("HonestFaceLoadIdentitySet", identity_set="input/person.safetensors")["result"]
    assert loaded.names == refs.names and torch.allclose(loaded.embeddings, refs.embeddings.cpu())
    assert status2 == status


def test_workflow_ui_and_api_twins_agree(comfy):
    ui = json.loads((WORKFLOWS / "Detect faces and paste back.json").read_text())
    api = json.loads((WORKFLOWS / "api" / "Detect faces and paste back.json").read_text())
    assert ui["version"] == 0.4 and ui["groups"] == [] and ui["config"] == {} and ui["extra"] == {}
    assert ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])

    def no_nulls(obj, where):
        if isinstance(obj, dict):
            for k, v in obj.items():
                assert v is not None or k == "link", f"null at {where}.{k}"
                no_nulls(v, f"{where}.{k}")
        elif isinstance(obj, list):
            assert None not in obj, where
            for i, v in enumerate(obj):
                no_nulls(v, f"{where}[{i}]")

    no_nulls(ui, "workflow")
    assert set(api) == {str(n["id"]) for n in ui["nodes"]}
    links = {link[0]: link for link in ui["links"]}
    for node in ui["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                    "widgets_values"):
            assert key in node, (node["id"], key)
        entry = api[str(node["id"])]
        assert entry["class_type"] == node["type"]
        cls = comfy.nodes.NODE_CLASS_MAPPINGS[node["type"]]
        widgets = [name for _, name, spec in _input_specs(cls)
                   if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES]
        for name, value in zip(widgets, node["widgets_values"]):
            assert entry["inputs"][name] == value, (node["type"], name)
        for inp in node["inputs"]:
            if inp["link"] is None:
                assert inp["name"] not in entry["inputs"]
                continue
            link = links[inp["link"]]
            assert link[3] == node["id"] and entry["inputs"][inp["name"]] == [str(link[1]), link[2]]
        for slot, out in enumerate(node["outputs"]):
            for link_id in out["links"]:
                assert links[link_id][1:3] == [node["id"], slot]
