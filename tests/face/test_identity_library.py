"""Identity library: a composite group photo of two real people, an identity set for each, matched with the real
SFace recogniser and the real YuNet detector."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from conftest import read_rgb, side_by_side
from honestface_core.errors import HonestFaceError
from honestface_core.face.alignment import align_faces
from honestface_core.face.detection import YuNetDetector, detect_faces
from honestface_core.face.identity import SFaceEncoder
from honestface_core.face.identity_library import IdentityLibrary
from honestface_core.face.references import prepare_references
from honestface_core.files.images import uint8_to_tensor


@pytest.fixture(scope="module")
def two_people(photos_dir, yunet_path, sface_path):
    """The composite (Obama left, Biden right), its two aligned faces, an identity set per person (Obama from two
    other photos; Biden from his photo mirrored and at another scale: the only one we have), and the encoder."""
    detector, encoder = YuNetDetector(yunet_path), SFaceEncoder(sface_path)
    obama, biden = read_rgb(photos_dir / "obama.jpg"), read_rgb(photos_dir / "biden.jpg")
    group = uint8_to_tensor(side_by_side(obama, biden))
    faces = detect_faces(detector, group)
    assert len(faces) == 2
    crops = align_faces(group, faces).crops
    sets = {"obama": prepare_references([(n, read_rgb(photos_dir / n)) for n in ("obama2.jpg", "obama3.jpg")], detector, encoder),
            "biden": prepare_references([("biden mirrored", np.ascontiguousarray(cv2.resize(biden[:, ::-1], None, fx=0.7, fy=0.7)))],
                                        detector, encoder)}
    return group, crops, sets, detector, encoder


def test_each_face_is_matched_to_its_own_set(two_people):
    _, crops, sets, _, encoder = two_people
    library = IdentityLibrary(["biden", "obama"], [sets["biden"], sets["obama"]])
    matches = library.match(crops, encoder)
    print([m.describe() for m in matches])
    assert [m.identity for m in matches] == ["obama", "biden"]  # faces left to right
    sim = torch.nn.functional.normalize(encoder.embed(crops), dim=-1) @ library.set_embeddings(encoder).T
    print("similarity faces x (biden, obama):", sim.tolist())
    own, other = min(sim[0, 1], sim[1, 0]), max(sim[0, 0], sim[1, 1])
    # measured: own 0.80 / 0.93, other 0.09 / 0.21; the 0.3 default sits in the gap
    assert own > 0.6 and other < 0.25
    assert library.references_for(matches) == [sets["obama"], sets["biden"]]


def test_unmatched_faces_and_one_face_per_set(two_people):
    _, crops, sets, _, encoder = two_people
    only_obama = IdentityLibrary(["obama"], [sets["obama"]])
    matches = only_obama.match(crops, encoder)
    assert [m.identity for m in matches] == ["obama", None] and matches[1].similarity < 0.25
    assert "no identity" in matches[1].describe()
    # the same person twice in one picture: the set goes to the closer face only (greedy, each set once)
    twice = only_obama.match(torch.cat([crops[:1], crops[:1].flip(2)]), encoder)
    assert sorted(m.identity is None for m in twice) == [False, True]
    assert only_obama.match(crops[:0], encoder) == []


def test_sets_from_another_encoder_are_re_embedded(two_people, test_models_dir):
    """A set made by another encoder is compared through its crops, never by mixing embedding spaces."""
    _, crops, sets, _, encoder = two_people
    foreign = sets["obama"]
    foreign = type(foreign)(foreign.crops, torch.nn.functional.normalize(torch.randn(len(foreign), 512), dim=-1),
                            foreign.names, foreign.status, "arcface:other")
    library = IdentityLibrary(["obama", "biden"], [foreign, sets["biden"]])
    assert [m.identity for m in library.match(crops, encoder)] == ["obama", "biden"]


def test_library_errors(two_people):
    _, crops, sets, _, encoder = two_people
    with pytest.raises(HonestFaceError, match="names"):
        IdentityLibrary(["a"], [sets["obama"], sets["biden"]])
    with pytest.raises(HonestFaceError, match="not unique"):
        IdentityLibrary(["a", "a"], [sets["obama"], sets["biden"]])
    with pytest.raises(HonestFaceError, match="threshold"):
        IdentityLibrary(["a"], [sets["obama"]]).match(crops, encoder, threshold=3)
