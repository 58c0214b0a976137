"""Alignment on real photos: crops on the FFHQ template by independent landmarks, batches and empty input
(the geometry itself: tests/test_geometry.py)."""

from __future__ import annotations

import numpy as np
import torch

from honestface_core.face.alignment import align_faces
from honestface_core.face.detection import DetectedFace, YuNetDetector, detect_faces
from honestface_core.files.images import load_image, uint8_to_tensor
from honestface_core.geometry import FFHQ_TEMPLATE_512, template_for_size

from test_geometry import _apply


def _dlib_five(pred, img, rect):
    p = np.array([[q.x, q.y] for q in pred(img, rect).parts()], float)
    return np.array([p[36:42].mean(0), p[42:48].mean(0), p[48], p[54]])  # eye centres, mouth corners


def test_aligned_crops_match_template_by_independent_landmarks(yunet_path, dlib68_path, photos_dir, astronaut, group_photo):
    """dlib's 68-point model (independent of the YuNet detector that drove the alignment) on the 512 crops.

    Measured (dlib-bin 19.24, YuNet int8 2023mar), crop pixels at 512, inter-ocular distance 126:
    large faces (astronaut, obama x3, biden): eye centres 2-19 px, mouth corners 0.5-27 px off the template
    (smiles and open mouths move the corners; YuNet and dlib define eye points differently); the 45-px-wide
    faces of t1.jpg: up to 44 px (a few original pixels). dlib run on the crop agrees with dlib run on the
    original image mapped through the alignment matrix to within a few pixels, which checks the warp itself.
    """
    import dlib

    pred = dlib.shape_predictor(str(dlib68_path))
    find = dlib.get_frontal_face_detector()
    det = YuNetDetector(yunet_path)
    cases = {"astronaut": astronaut, "t1": group_photo, **{n: load_image(photos_dir / f"{n}.jpg") for n in ("obama", "obama2", "obama3", "biden")}}
    eye, mouth, consistency = {}, {}, []
    for name, img in cases.items():
        x = uint8_to_tensor(img)
        al = align_faces(x, detect_faces(det, x))
        originals = find(img, 1 if name == "t1" else 0)
        for i in range(len(al)):
            crop = np.ascontiguousarray((al.crops[i].numpy() * 255 + 0.5).astype(np.uint8))
            rects = find(crop, 0)
            assert len(rects) >= 1, f"dlib finds no face in aligned crop {i} of {name}"
            rect = max(rects, key=lambda r: r.area())
            pts = _dlib_five(pred, crop, rect)
            err = np.linalg.norm(pts - FFHQ_TEMPLATE_512[[0, 1, 3, 4]], axis=1)
            eye.setdefault(name, []).extend(err[:2])
            mouth.setdefault(name, []).extend(err[2:])
            nose = al.faces[i].kps[2]
            match = [r for r in originals if r.left() < nose[0] < r.right() and r.top() < nose[1] < r.bottom()]
            if match:
                mapped = _apply(al.matrices[i].double().numpy(), _dlib_five(pred, img, match[0]))
                consistency.append(np.linalg.norm(mapped - pts, axis=1).mean())
    large = [n for n in cases if n != "t1"]
    assert max(max(eye[n]) for n in large) < 22, eye
    assert max(max(mouth[n]) for n in large) < 32, mouth
    assert np.median(np.concatenate([eye[n] for n in large])) < 12
    assert max(eye["t1"] + mouth["t1"]) < 50 and np.mean(eye["t1"]) < 30
    assert len(consistency) >= 9 and np.median(consistency) < 4 and max(consistency) < 8, consistency


def test_align_faces_batch_shapes_and_empty(yunet_path, astronaut):
    det = YuNetDetector(yunet_path)
    x = uint8_to_tensor([astronaut, astronaut[:, ::-1].copy()])
    f0 = detect_faces(det, x[:1])[0]
    mirrored = f0.kps[[1, 0, 2, 4, 3]] * [-1, 1] + [astronaut.shape[1] - 1, 0]  # x -> W-1-x, left <-> right
    faces = [f0, DetectedFace(1, f0.box, f0.score, mirrored.astype(np.float32))]
    al = align_faces(x, faces, size=256)
    assert len(al) == 2 and al.crops.shape == (2, 256, 256, 3) and al.matrices.dtype == torch.float32
    assert al.image_index.tolist() == [0, 1] and 0 <= al.crops.min() and al.crops.max() <= 1
    # batched alignment equals aligning each image alone; the mirrored face lands on the template too
    alone = align_faces(x[1:], [DetectedFace(0, f0.box, f0.score, mirrored.astype(np.float32))], size=256)
    assert torch.allclose(alone.crops[0], al.crops[1], atol=1e-6)
    k = _apply(al.matrices[1].double().numpy(), mirrored)
    assert np.abs(k - template_for_size(256)).max() < 0.05 * 256
    empty = align_faces(x, [])
    assert len(empty) == 0 and empty.crops.shape == (0, 512, 512, 3)
    # a face bigger than twice the crop goes through the antialiased shrink path and lands on the template
    big = align_faces(x[:1], faces[:1], size=64)
    k = _apply(big.matrices[0].double().numpy(), faces[0].kps.astype(float))
    assert np.abs(k - template_for_size(64)).max() < 3
