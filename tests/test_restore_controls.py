"""Restore Faces' controls: strength, the mask of the pasted faces, the face filters and the identity library for
group photos, end to end with the tiny random-weight model, the real YuNet and SFace and real photos."""

from __future__ import annotations

import cv2
import pytest
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.face.detection import YuNetDetector, sort_faces
from honestface_core.files.images import uint8_to_tensor
from honestface_core.model.loading import load_restorer
from honestface_core.pipeline import restore_images

from conftest import read_rgb
from test_identity_library import side_by_side


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


@pytest.fixture(scope="module")
def group_of_two(setup, photos_dir, sface_path):
    """A composite group photo (Obama left, Biden right), an identity set per person made with the model's own
    backbone (so the model can use them), and the real SFace to tell the two apart."""
    from honestface_core.face.identity import SFaceEncoder
    from honestface_core.face.identity_library import IdentityLibrary
    from honestface_core.face.references import prepare_references
    from honestface_core.pipeline import BackboneIdentityEncoder

    model, detector, _ = setup
    obama, biden = read_rgb(photos_dir / "obama.jpg"), read_rgb(photos_dir / "biden.jpg")
    encoder = BackboneIdentityEncoder(model)
    sets = {"obama": prepare_references([(n, read_rgb(photos_dir / n)) for n in ("obama2.jpg", "obama3.jpg")], detector, encoder),
            "biden": prepare_references([("biden", cv2.resize(biden[:, ::-1], None, fx=0.7, fy=0.7))], detector, encoder)}
    library = IdentityLibrary(["biden", "obama"], [sets["biden"], sets["obama"]])
    return uint8_to_tensor(side_by_side(obama, biden)), library, sets, SFaceEncoder(sface_path)


def test_group_photo_each_face_with_its_own_references_in_one_unet_call(setup, group_of_two):
    from honestface_core.pipeline import restore_crops

    model, detector, _ = setup
    image, library, sets, sface = group_of_two
    prompts = []
    hook = model.generator.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: prompts.append(kwargs["encoder_hidden_states"].detach().clone()), with_kwargs=True)
    try:
        result = restore_images(model, image, detector, library, identity_encoder=sface)
    finally:
        hook.remove()
    assert [m.identity for m in result.identities] == ["obama", "biden"], [m.describe() for m in result.identities]
    assert len(prompts) == 1 and prompts[0].shape[0] == 2  # both faces in one UNet call
    assert not torch.allclose(prompts[0][0], prompts[0][1])  # each face has its own prompt
    # each face got its own person's references: the same batch with the sets given per face is bit-identical, and
    # with the two sets swapped it is not (one call each, so the kernels and batch shapes are the same on any CPU)
    own = restore_crops(model, result.faces.crops, [sets["obama"], sets["biden"]])
    swapped = restore_crops(model, result.faces.crops, [sets["biden"], sets["obama"]])
    assert torch.equal(own, result.restored) and (swapped - own).abs().amax() > 1e-3


def test_group_photo_unmatched_faces_blind_or_untouched(setup, group_of_two):
    from honestface_core.face.identity_library import IdentityLibrary

    model, detector, _ = setup
    image, _, sets, sface = group_of_two
    only_obama = IdentityLibrary(["obama"], [sets["obama"]])
    blind = restore_images(model, image, detector, only_obama, identity_encoder=sface)
    assert [m.identity for m in blind.identities] == ["obama", None] and len(blind.faces) == 2
    skip = restore_images(model, image, detector, only_obama, identity_encoder=sface, unmatched="skip")
    assert len(skip.faces) == 1 and skip.faces.faces[0].box[0] < image.shape[2] / 2  # only Obama's face (left)
    right = skip.images[..., image.shape[2] // 2 + 40:, :]
    assert torch.equal(right, image[..., image.shape[2] // 2 + 40:, :]) and skip.mask[..., image.shape[2] // 2 + 40:].max() == 0
    with pytest.raises(HonestFaceError, match="unmatched"):
        restore_images(model, image, detector, only_obama, unmatched="drop")
