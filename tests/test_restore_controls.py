"""Restore Faces' controls: strength, the mask of the pasted faces and the face filters, end to end with the
tiny random-weight model and the real YuNet on a real group photo."""

from __future__ import annotations

import pytest
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.face.detection import YuNetDetector, sort_faces
from honestface_core.files.images import uint8_to_tensor
from honestface_core.model.loading import load_restorer
from honestface_core.pipeline import restore_images


@pytest.fixture(scope="module")
def setup(test_models_dir, yunet_path, group_photo):
    return load_restorer(test_models_dir, device="cpu", dtype="fp32"), YuNetDetector(yunet_path), uint8_to_tensor(group_photo)


def test_strength_zero_returns_the_input_and_one_the_restored_faces(setup):
    model, detector, image = setup
    zero = restore_images(model, image, detector, strength=0.0)
    assert torch.equal(zero.images, image) and zero.mask.max() == 0 and len(zero.faces) == 6
    full = restore_images(model, image, detector)
    assert full.mask.shape == image.shape[:3] and 0.99 < full.mask.max() <= 1
    changed = (full.images != image).any(-1)
    assert changed.any() and not (changed & (full.mask == 0)).any()
    half = restore_images(model, image, detector, strength=0.5)
    # the same faces, each blended at half weight; where two faces overlap, a + b (1 - a) composes to between
    # half the full-strength weight and the full-strength weight
    assert torch.equal(half.mask > 0, full.mask > 0)
    assert (half.mask >= 0.5 * full.mask - 1e-6).all() and (half.mask <= full.mask + 1e-6).all()
    assert half.mask.max() > 0.49
    assert (half.images - image).abs().amax() < (full.images - image).abs().amax()
    with pytest.raises(HonestFaceError, match="strength"):
        restore_images(model, image, detector, strength=2.0)


def test_face_filters_pick_the_faces_restored(setup):
    model, detector, image = setup
    faces = sort_faces(detector.detect((image[0] * 255).round().byte().numpy()))
    short = sorted(float(min(f.box[2] - f.box[0], f.box[3] - f.box[1])) for f in faces)
    result = restore_images(model, image, detector, min_face_size=int(short[3]) + 1)
    assert len(result.faces) == 2  # the two largest of the six
    big = restore_images(model, image, detector, selection="0", min_face_size=int(short[3]) + 1)
    assert len(big.faces) == 1 and big.faces.faces[0].box[0] == min(f.box[0] for f in result.faces.faces)
    with pytest.raises(HonestFaceError, match="gender/age model"):
        restore_images(model, image, detector, gender="male")  # YuNet estimates no gender
