"""Reference sets from image lists and folders (real portraits, real YuNet + SFace), top-K, identity-set files."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.identity import cosine_similarity
from honestface_core.references import (ReferenceSet, load_identity_set, prepare_references, read_reference_folder,
                                        resolve_reference_folder, save_identity_set)


def gradient(h=300, w=400) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.full((h, w, 1), 128, np.float32)], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def refset(portraits, yunet_detector, sface_encoder):
    """obama2, a plain gradient (no face), biden, and obama at half size (references of different sizes)."""
    half = portraits["obama"][::2, ::2].copy()
    images = [("image 0", portraits["obama2"]), ("image 1", gradient()), ("image 2", portraits["biden"]), ("image 3", half)]
    return prepare_references(images, yunet_detector, sface_encoder)


def test_prepare_from_image_list(refset):
    assert refset.names == ["image 0", "image 2", "image 3"]
    assert refset.status == ["image 0: ok", "image 1: skipped: no face found", "image 2: ok", "image 3: ok"]
    assert refset.crops.shape == (3, 512, 512, 3) and refset.embeddings.shape == (3, 128)
    assert refset.encoder_name == "sface" and len(refset) == 3
    sim = cosine_similarity(refset.embeddings, refset.embeddings)
    assert sim[0, 2] > sim[0, 1] + 0.25  # obama2 ~ half-size obama, not biden
    mean = refset.mean_embedding()
    assert mean.shape == (1, 128) and torch.allclose(mean.norm(), torch.tensor(1.0))


def test_no_face_anywhere(yunet_detector, sface_encoder):
    with pytest.raises(HonestFaceError, match="no face was found in any of the 2"):
        prepare_references([("a", gradient()), ("b", gradient(200, 200))], yunet_detector, sface_encoder)
    with pytest.raises(HonestFaceError, match="no reference images"):
        prepare_references([], yunet_detector, sface_encoder)


def test_top_k_keeps_the_target_person(portraits, yunet_detector, sface_encoder):
    target_set = prepare_references([("target", portraits["obama3"])], yunet_detector, sface_encoder)
    images = [("biden.jpg", portraits["biden"]), ("obama.jpg", portraits["obama"]), ("obama2.jpg", portraits["obama2"])]
    kept = prepare_references(images, yunet_detector, sface_encoder, target_embedding=target_set.embeddings[0], top_k=2)
    print("\n" + "\n".join(kept.status))
    assert kept.names == ["obama.jpg", "obama2.jpg"]
    assert kept.status[0].startswith("biden.jpg: skipped: not in top 2 (similarity")
    assert kept.status[1].startswith("obama.jpg: ok (similarity") and kept.status[2].startswith("obama2.jpg: ok (similarity")
    assert kept.embeddings.shape == (2, 128) and kept.crops.shape[0] == 2
    with pytest.raises(HonestFaceError, match="target"):
        prepare_references(images, yunet_detector, sface_encoder, top_k=1)


@pytest.fixture
def input_dir(tmp_path, photos_dir):
    root = tmp_path / "input"
    refs = root / "refs" / "obama"
    refs.mkdir(parents=True)
    for n in ("obama2.jpg", "obama.jpg"):
        shutil.copy(photos_dir / n, refs / n)
    (refs / "notes.txt").write_text("not an image")
    (refs / ".hidden.jpg").write_bytes(b"ignored")
    return root


def test_folder_round_trip(input_dir, yunet_detector, sface_encoder):
    folder = resolve_reference_folder(input_dir, "refs/obama")
    assert folder == (input_dir / "refs" / "obama").resolve()
    images = read_reference_folder(folder, within=input_dir)
    assert [n for n, _ in images] == ["obama.jpg", "obama2.jpg"]
    assert images[0][1].shape != images[1][1].shape  # different sizes are fine
    refs = prepare_references(images, yunet_detector, sface_encoder)
    assert refs.names == ["obama.jpg", "obama2.jpg"] and refs.status == ["obama.jpg: ok", "obama2.jpg: ok"]


@pytest.mark.parametrize("name", ["../outside", "refs/../../outside", "link_out", "{abs}"])
def test_folder_outside_input_dir(input_dir, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, input_dir / "link_out")
    with pytest.raises(HonestFaceError, match="outside the input directory") as err:
        resolve_reference_folder(input_dir, name.format(abs=outside))
    assert "inside the input directory" in err.value.fix


def test_folder_missing_or_empty(input_dir):
    with pytest.raises(HonestFaceError, match="does not exist"):
        resolve_reference_folder(input_dir, "refs/nobody")
    with pytest.raises(HonestFaceError, match="no folder name"):
        resolve_reference_folder(input_dir, "  ")
    empty = input_dir / "refs" / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(HonestFaceError, match="contains no image files"):
        read_reference_folder(resolve_reference_folder(input_dir, "refs/empty"))


def test_linked_file_outside_is_refused(input_dir, photos_dir):
    os.symlink(photos_dir / "biden.jpg", input_dir / "refs" / "obama" / "zz.jpg")
    with pytest.raises(HonestFaceError, match="zz.jpg"):
        read_reference_folder(input_dir / "refs" / "obama", within=input_dir)


def test_corrupt_file_is_named(input_dir, photos_dir):
    bad = input_dir / "refs" / "obama" / "truncated.jpg"
    bad.write_bytes((photos_dir / "obama3.jpg").read_bytes()[:3000])
    with pytest.raises(HonestFaceError) as err:
        read_reference_folder(input_dir / "refs" / "obama")
    assert str(bad) in str(err.value) and "Remove or replace" in str(err.value)


def test_identity_set_round_trip(refset, tmp_path):
    path = save_identity_set(refset, tmp_path / "sets" / "obama.safetensors")
    back = load_identity_set(path)
    assert torch.equal(back.crops, refset.crops) and torch.equal(back.embeddings, refset.embeddings)
    assert (back.names, back.status, back.encoder_name) == (refset.names, refset.status, refset.encoder_name)
    before = path.read_bytes()
    other = ReferenceSet(refset.crops[:1], refset.embeddings[:1], refset.names[:1], refset.status[:1], "sface")
    with pytest.raises(HonestFaceError, match="already exists"):
        save_identity_set(other, path)
    assert path.read_bytes() == before
    save_identity_set(other, path, overwrite=True)
    assert load_identity_set(path).names == refset.names[:1]
    assert [p.name for p in path.parent.iterdir()] == ["obama.safetensors"]  # no temporary files left


def test_identity_set_bad_files(refset, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(HonestFaceError, match=r"\.safetensors"):
        save_identity_set(refset, tmp_path / "set.pt")
    with pytest.raises(HonestFaceError, match="does not exist"):
        load_identity_set(tmp_path / "nothing.safetensors")
    good = save_identity_set(refset, tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(HonestFaceError, match="not a readable"):
        load_identity_set(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(HonestFaceError, match="not a readable"):
        load_identity_set(garbage)
    foreign = tmp_path / "lora.safetensors"
    save_file({"lora_A.weight": torch.zeros(2, 2)}, str(foreign))
    with pytest.raises(HonestFaceError, match="not a HonestFace identity set"):
        load_identity_set(foreign)
