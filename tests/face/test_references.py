"""Reference sets from image lists and folders (real portraits, real YuNet + SFace), top-K, identity-set files."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.face.identity import cosine_similarity
from honestface_core.face.references import (ReferenceSet, load_identity_set, prepare_references, read_reference_folder,
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


@pytest.mark.parametrize("name, problem", [
    ("../outside", "contains '..', which could lead outside the input directory"),
    ("refs/../../outside", "contains '..'"),
    ("refs\\..\\..\\outside", "contains '..'"),
    ("link_out", "which is outside the input directory"),
    ("{abs}", "is an absolute path; only names inside the input directory"),
    ("{abs_inside}", "is an absolute path"),
    ("refs/obama\x00.jpg", "contains a control character (e.g. a null byte"),
    ("refs/line\nbreak", "contains a control character"),
    ("x" * 5000, "is 5000 characters long"),
    ("refs/" + "y" * 256, "255 bytes per folder or file name"),
])
def test_folder_names_that_could_leave_the_input_dir(input_dir, tmp_path, name, problem):
    """Hostile or careless folder names: a clear error naming the input, never an OSError / ValueError."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, input_dir / "link_out")
    with pytest.raises(HonestFaceError) as err:
        resolve_reference_folder(input_dir, name.format(abs=outside, abs_inside=input_dir / "refs" / "obama"))
    message = str(err.value)
    assert message.startswith("reference folder") and problem in message, message
    assert len(message) < 600  # a 5000-character name is not echoed in full
    assert "inside the input directory" in err.value.fix or "relative to the input directory" in err.value.fix


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


# ---------------------------------------------------------------------------------------------------------
# Crafted identity-set files: a clear error on load, never a crash (or black output) later


def small_refset(k: int = 2, size: int = 64, dim: int = 8) -> ReferenceSet:
    g = torch.Generator().manual_seed(3)
    emb = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=-1)
    return ReferenceSet(torch.rand(k, size, size, 3, generator=g), emb, [f"r{i}" for i in range(k)],
                        [f"r{i}: ok" for i in range(k)], "sface")


def write_set(path, crops, embeddings, names=None, status=None):
    from safetensors.torch import save_file

    k = crops.shape[0] if crops.ndim else 0
    names = [f"r{i}" for i in range(k)] if names is None else names
    meta = {"format": "honestface.identity_set", "format_version": "1", "names": json.dumps(names),
            "status": json.dumps([f"{n}: ok" for n in names] if status is None else status), "encoder_name": "sface"}
    save_file({"crops": crops.contiguous(), "embeddings": embeddings.contiguous()}, str(path), metadata=meta)
    return path


def _nan_at(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = value
    return t


@pytest.mark.parametrize("case, problem", [
    ("nan_embedding", "tensor 'embeddings' holds NaN values"),
    ("inf_embedding", "tensor 'embeddings' holds infinite values"),
    ("nan_crop", "tensor 'crops' holds NaN values"),
    ("tiny_crops", "holds 4x4 crops, smaller than the 64x64 minimum"),
    ("int_crops", "tensor 'crops' has dtype torch.uint8, not a float type"),
    ("int_embeddings", "tensor 'embeddings' has dtype torch.int64"),
    ("not_square", "tensor 'crops' has shape (2, 64, 80, 3)"),
    ("grey_crops", "tensor 'crops' has shape (2, 64, 64)"),
    ("no_crops", "tensor 'crops' has shape (0, 64, 64, 3)"),
    ("count_mismatch", "tensor 'embeddings' has shape (3, 8), not one row per crop (2, D)"),
    ("names_mismatch", "inconsistent shapes"),
    ("names_not_list", "has damaged metadata"),
    ("out_of_range", "outside [0, 1]"),
    ("zero_embedding", "not L2-normalised"),
])
def test_crafted_identity_sets_are_refused_on_load(tmp_path, case, problem):
    ref = small_refset()
    crops, emb = ref.crops, ref.embeddings
    names = None
    if case == "nan_embedding":
        emb = _nan_at(emb, float("nan"))
    elif case == "inf_embedding":
        emb = _nan_at(emb, float("inf"))
    elif case == "nan_crop":
        crops = _nan_at(crops, float("nan"))
    elif case == "tiny_crops":
        crops = crops[:, :4, :4]
    elif case == "int_crops":
        crops = (crops * 255).to(torch.uint8)
    elif case == "int_embeddings":
        emb = emb.long()
    elif case == "not_square":
        crops = torch.rand(2, 64, 80, 3)
    elif case == "grey_crops":
        crops = crops[..., 0]
    elif case == "no_crops":
        crops, emb = crops[:0], emb[:0]
    elif case == "count_mismatch":
        emb = torch.cat([emb, emb[:1]])
    elif case == "names_mismatch":
        names = ["only one"]
    elif case == "names_not_list":
        names = {"a": 1}
    elif case == "out_of_range":
        crops = crops * 3
    elif case == "zero_embedding":
        emb = torch.cat([emb[:1], torch.zeros_like(emb[:1])])
    path = write_set(tmp_path / f"{case}.safetensors", crops, emb, names)
    with pytest.raises(HonestFaceError) as err:
        load_identity_set(path)
    message = str(err.value)
    assert str(path) in message and problem in message, message


def test_identity_set_checks_accept_what_save_writes(tmp_path):
    """The smallest allowed crops, half-precision tensors and one reference load (as float32)."""
    ref = small_refset(k=1, size=64)
    back = load_identity_set(save_identity_set(ref, tmp_path / "one.safetensors"))
    assert torch.equal(back.crops, ref.crops) and torch.equal(back.embeddings, ref.embeddings)
    half = write_set(tmp_path / "half.safetensors", ref.crops.half(), ref.embeddings.half())
    loaded = load_identity_set(half)
    assert loaded.crops.dtype == torch.float32 and loaded.embeddings.dtype == torch.float32


def test_identity_set_save_never_writes_through_links(tmp_path):
    """A (dangling) link at the target is neither replaced nor written through, even with overwrite; a link left
    beside it (e.g. at an old temporary name) is never touched."""
    ref = small_refset()
    outside = tmp_path / "outside.safetensors"
    os.symlink(outside, tmp_path / "set.safetensors")
    for overwrite in (False, True):
        with pytest.raises(HonestFaceError, match="symbolic link"):
            save_identity_set(ref, tmp_path / "set.safetensors", overwrite=overwrite)
    os.symlink(outside, tmp_path / ".other.safetensors.partial")
    save_identity_set(ref, tmp_path / "other.safetensors")
    assert not outside.exists() and (tmp_path / "set.safetensors").is_symlink()
    assert torch.equal(load_identity_set(tmp_path / "other.safetensors").embeddings, ref.embeddings)
