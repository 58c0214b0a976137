"""insightface packs: the real FaceAnalysis loading code on random-weight packs, and the no-download guarantees."""

from __future__ import annotations

import logging
import shutil
import socket
from importlib import metadata

import numpy as np
import pytest
import torch

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.files.insightface_models import INSIGHTFACE_PACKS, PACKS_FOLDER, load_face_analysis, pack_folder
from honestface_core.files.model_paths import MODEL_FILES
from honestface_core.testing.insightface_packs import write_insightface_test_models


@pytest.fixture(scope="module")
def packs_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ins_models")
    write_insightface_test_models(out)
    return out


@pytest.fixture
def no_network_no_home(monkeypatch, tmp_path):
    """HOME points at an empty folder and every socket connection fails."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return home


def test_packs_come_from_model_table():
    table = {(m.folder, m.filename) for m in MODEL_FILES if m.folder.startswith(PACKS_FOLDER)}
    assert {(f"{PACKS_FOLDER}/{p}", f) for p, files in INSIGHTFACE_PACKS.items() for f in files} == table
    assert INSIGHTFACE_PACKS["antelopev2"][:2] == ("scrfd_10g_bnkps.onnx", "glintr100.onnx")
    assert INSIGHTFACE_PACKS["buffalo_l"][:2] == ("det_10g.onnx", "w600k_r50.onnx")


@pytest.mark.parametrize("pack", ["antelopev2", "buffalo_l"])
def test_random_pack_loads_through_faceanalysis(packs_dir, pack, astronaut, no_network_no_home):
    from insightface.app import FaceAnalysis

    app = load_face_analysis(packs_dir, pack, det_size=320)
    assert isinstance(app, FaceAnalysis)
    kinds = {k: type(v).__name__ for k, v in app.models.items()}
    assert kinds == {"detection": "SCRFD", "recognition": "ArcFaceONNX", "landmark_2d_106": "Landmark",
                     "landmark_3d_68": "Landmark", "genderage": "Attribute"}
    det = app.models["detection"]
    assert (det.fmc, det.use_kps, det._num_anchors, det.input_size) == (3, True, 2, (320, 320))
    assert app.models["recognition"].input_size == (112, 112)
    assert app.models["recognition"].model_file.endswith(INSIGHTFACE_PACKS[pack][1])
    faces = app.get(np.ascontiguousarray(astronaut[..., ::-1]))  # runs end to end; random weights: count unchecked
    for face in faces:
        assert face.embedding.shape == (512,) and face.kps.shape == (5, 2) and face.landmark_2d_106.shape == (106, 2)
    assert not (no_network_no_home / ".insightface").exists()


def test_allowed_modules(packs_dir):
    app = load_face_analysis(packs_dir, "antelopev2", allowed_modules=("detection", "recognition"))
    assert set(app.models) == {"detection", "recognition"}


def test_any_pack_folder_name(packs_dir, tmp_path):
    shutil.copytree(pack_folder(packs_dir, "antelopev2"), pack_folder(tmp_path, "my_pack"))
    app = load_face_analysis(tmp_path, "my_pack")
    assert "recognition" in app.models


def test_missing_folder_names_file_and_folder(tmp_path, no_network_no_home):
    with pytest.raises(MissingModelError) as err:
        load_face_analysis(tmp_path / "models", "antelopev2")
    msg = str(err.value)
    assert "scrfd_10g_bnkps.onnx" in msg and str(tmp_path / "models" / "insightface" / "models" / "antelopev2") in msg
    assert not (no_network_no_home / ".insightface").exists()
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("missing", ["det_10g.onnx", "w600k_r50.onnx"])
def test_missing_detector_or_recognizer(packs_dir, tmp_path, missing, no_network_no_home):
    folder = pack_folder(tmp_path, "buffalo_l")
    shutil.copytree(pack_folder(packs_dir, "buffalo_l"), folder)
    (folder / missing).unlink()
    with pytest.raises(MissingModelError) as err:
        load_face_analysis(tmp_path, "buffalo_l")
    assert err.value.filename == missing and err.value.folder == str(folder)
    assert not (no_network_no_home / ".insightface").exists()


def test_unknown_pack_without_detector(packs_dir, tmp_path):
    folder = pack_folder(tmp_path, "only_rec")
    folder.mkdir(parents=True)
    shutil.copy(pack_folder(packs_dir, "antelopev2") / "glintr100.onnx", folder)
    with pytest.raises(HonestFaceError, match="no face detector"):
        load_face_analysis(tmp_path, "only_rec")
    with pytest.raises(MissingModelError):
        load_face_analysis(tmp_path, "empty_pack")


def test_damaged_file_is_a_clear_error(packs_dir, tmp_path):
    folder = pack_folder(tmp_path, "antelopev2")
    shutil.copytree(pack_folder(packs_dir, "antelopev2"), folder)
    (folder / "glintr100.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(HonestFaceError, match="could not load"):
        load_face_analysis(tmp_path, "antelopev2")


def test_unavailable_provider_falls_back_to_cpu(packs_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="honestface_core.files.onnx_sessions"):
        app = load_face_analysis(packs_dir, "antelopev2", providers=("NoSuchExecutionProvider",),
                                 allowed_modules=("detection", "recognition"))
    assert app.models["recognition"].session.get_providers() == ["CPUExecutionProvider"]
    [warning] = [r.getMessage() for r in caplog.records if "are not in this onnxruntime build" in r.getMessage()]
    assert "['NoSuchExecutionProvider']" in warning
    assert f"onnxruntime=={metadata.version('onnxruntime')}" in warning and "GPU execution" in warning


def test_each_model_file_logs_its_real_providers_once(packs_dir, tmp_path, caplog):
    shutil.copytree(pack_folder(packs_dir, "buffalo_l"), pack_folder(tmp_path, "buffalo_l"))  # paths not logged yet
    with caplog.at_level(logging.INFO, logger="honestface_core.files.onnx_sessions"):
        load_face_analysis(tmp_path, "buffalo_l", det_size=128)
        load_face_analysis(tmp_path, "buffalo_l", det_size=128)
    lines = sorted(r.getMessage() for r in caplog.records if r.name == "honestface_core.files.onnx_sessions")
    assert lines == sorted(f"ONNX model {f} runs on ['CPUExecutionProvider']" for f in INSIGHTFACE_PACKS["buffalo_l"])


def _nest(packs_dir, root, pack="buffalo_l", drop=None):
    """The pack unzipped one level too deep: models/insightface/models/<pack>/<pack>/*.onnx."""
    nested = pack_folder(root, pack) / pack
    shutil.copytree(pack_folder(packs_dir, pack), nested)
    if drop:
        (nested / drop).unlink()
    return nested


def test_pack_unpacked_one_level_too_deep_is_found_and_explained(packs_dir, tmp_path, caplog):
    nested = _nest(packs_dir, tmp_path)
    with caplog.at_level(logging.WARNING, logger="honestface_core.files.insightface_models"):
        app = load_face_analysis(tmp_path, "buffalo_l", det_size=128, allowed_modules=("detection", "recognition"))
        load_face_analysis(tmp_path, "buffalo_l", det_size=128, allowed_modules=("detection", "recognition"))
    assert app.models["recognition"].model_file == str((nested / "w600k_r50.onnx").resolve())
    [warning] = [r.getMessage() for r in caplog.records if "too deep" in r.getMessage()]  # once, not per load
    assert "one level too deep" in warning and str(nested) in warning and "move the .onnx files up" in warning
    assert str(pack_folder(tmp_path, "buffalo_l")) in warning


def test_nested_pack_missing_a_file_names_the_nested_folder(packs_dir, tmp_path):
    nested = _nest(packs_dir, tmp_path, drop="w600k_r50.onnx")
    with pytest.raises(MissingModelError) as err:
        load_face_analysis(tmp_path, "buffalo_l")
    assert err.value.filename == "w600k_r50.onnx" and err.value.folder == str(nested)


def test_writer_never_overwrites(packs_dir):
    before = (pack_folder(packs_dir, "buffalo_l") / "det_10g.onnx").read_bytes()
    with pytest.raises(HonestFaceError, match="already exists"):
        write_insightface_test_models(packs_dir, packs=("buffalo_l",))
    assert (pack_folder(packs_dir, "buffalo_l") / "det_10g.onnx").read_bytes() == before


def test_arcface_encoder_matches_insightface_own_crop(packs_dir, photos_dir, yunet_path):
    """Our FFHQ-512 -> ArcFace-112 re-warp gives the embedding insightface computes from the photo itself."""
    from insightface.app.common import Face

    from honestface_core.face.alignment import align_faces
    from honestface_core.face.detection import YuNetDetector
    from honestface_core.face.identity import ArcFaceEncoder, cosine_similarity
    from honestface_core.files.images import load_image, uint8_to_tensor

    app = load_face_analysis(packs_dir, "antelopev2", allowed_modules=("detection", "recognition"))
    img = load_image(photos_dir / "obama.jpg")
    face = YuNetDetector(yunet_path).detect(img)[0]
    ours = ArcFaceEncoder(app).embed(align_faces(uint8_to_tensor(img), [face], 512).crops)
    theirs = app.models["recognition"].get(np.ascontiguousarray(img[..., ::-1]), Face(bbox=face.box, kps=face.kps))
    cos = cosine_similarity(ours, torch.from_numpy(theirs)).item()
    print(f"ArcFaceEncoder vs insightface norm_crop embedding: cos = {cos:.4f}")
    assert cos > 0.95
