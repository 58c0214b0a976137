"""Restoration pipeline with the tiny random-weight models: batching, chunking, per-face references and their cache
on the reference set, pass-through, CLI.

The tiny model's outputs are noise-like (random weights); the tests check shapes, equivalences and that
nothing outside the pasted faces changes, never what a face looks like.
"""

from __future__ import annotations

import gc
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from honestface_core.face.alignment import align_faces
from honestface_core.cli.main import main as cli_main
from honestface_core.face.detection import YuNetDetector, detect_faces
from honestface_core.errors import HonestFaceError
from honestface_core.files.images import uint8_to_tensor
from honestface_core import pipeline
from honestface_core.model.loading import load_restorer
from honestface_core.pipeline import BackboneIdentityEncoder, restore_crops, restore_images
from honestface_core.face.references import ReferenceSet, prepare_references

from conftest import read_rgb
from test_pasteback import HostReads


@pytest.fixture(scope="module")
def model(test_models_dir):
    return load_restorer(test_models_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def detector(yunet_path):
    return YuNetDetector(yunet_path)


@pytest.fixture(scope="module")
def refs(model, detector, photos_dir) -> ReferenceSet:
    images = [(n, read_rgb(photos_dir / n)) for n in ("obama.jpg", "obama2.jpg")]
    return prepare_references(images, detector, BackboneIdentityEncoder(model))


@pytest.fixture(scope="module")
def other_refs(model, detector, photos_dir) -> ReferenceSet:
    """Another person's set, with another K (1) than ``refs`` (2)."""
    return prepare_references([("biden.jpg", read_rgb(photos_dir / "biden.jpg"))], detector, BackboneIdentityEncoder(model))


@pytest.fixture(scope="module")
def astronaut_crops(astronaut, detector) -> torch.Tensor:
    """Two real aligned face crops: the astronaut's face and its mirror image."""
    image = uint8_to_tensor(astronaut)
    faces = detect_faces(detector, image, "largest")
    assert len(faces) == 1
    crop = align_faces(image, faces).crops
    return torch.cat([crop, crop.flip(2)])


def test_model_has_backbone_and_refs_use_it(model, refs):
    assert model.backbone is not None
    assert len(refs) == 2 and refs.embeddings.shape == (2, model.config.identity.embedding_dim)
    assert refs.encoder_name == f"arcface:{model.config.features.backbone}"


@pytest.fixture(scope="module")
def per_face(model, refs, astronaut_crops) -> torch.Tensor:
    calls = []
    out = restore_crops(model, astronaut_crops, refs, chunk_size=1, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]
    return out


def test_batch_equals_per_face_and_reference_cache(model, refs, astronaut_crops, per_face):
    calls = []
    batch = restore_crops(model, astronaut_crops, refs, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 2)]  # one UNet batch for both faces
    assert batch.shape == astronaut_crops.shape and batch.dtype == torch.float32
    assert 0 <= batch.min() and batch.max() <= 1
    # batched vs single convolutions differ in rounding; the random tiny model amplifies it at a few pixels
    diff = (batch - per_face).abs()
    assert diff.mean() < 2e-4 and diff.max() < 0.05
    (entry,) = refs._cache[model.backbone].values()  # encoded once for this model, device and dtype, kept on the set
    assert entry[1] is model.encode_references(refs)
    blind = restore_crops(model, astronaut_crops[:1], None)
    assert (blind - batch[:1]).abs().max() > 1e-3  # references change the prompt, hence the result


def test_out_of_memory_halves_the_chunk(model, refs, astronaut_crops, per_face, monkeypatch):
    """A device that cannot fit two faces: the chunk is halved and the result is the per-face one."""
    real_forward = type(model).forward
    sizes = []

    def forward_with_limit(self, lq, refs=None, clamp=True):
        sizes.append(lq.shape[0])
        if lq.shape[0] > 1:
            raise torch.OutOfMemoryError("simulated: 2 faces do not fit")
        return real_forward(self, lq, refs, clamp)

    monkeypatch.setattr(type(model), "forward", forward_with_limit)
    out = restore_crops(model, astronaut_crops, refs)
    assert sizes == [2, 1, 1]
    torch.testing.assert_close(out, per_face, atol=1e-6, rtol=0)
    monkeypatch.setattr(type(model), "forward", lambda self, lq, refs=None, clamp=True: (_ for _ in ()).throw(
        torch.OutOfMemoryError("simulated")))
    with pytest.raises(HonestFaceError, match="one face does not fit"):
        restore_crops(model, astronaut_crops[:1], refs)


def test_references_of_another_embedding_size_are_refused(model, astronaut_crops):
    sface_refs = ReferenceSet(astronaut_crops[:1], torch.nn.functional.normalize(torch.randn(1, 128), dim=-1),
                              ["a.jpg"], ["a.jpg: ok"], "sface")
    with pytest.raises(HonestFaceError, match="128-d embeddings.*sface.*512-d ArcFace"):
        restore_crops(model, astronaut_crops, sface_refs)


def test_restore_images_changes_only_the_face(model, refs, detector, astronaut):
    image = uint8_to_tensor(astronaut)
    result = restore_images(model, image, detector, refs, "all")
    assert result.images.shape == image.shape and len(result.faces) == 1 and not result.messages
    changed = (result.images - image).abs().amax(-1)[0] > 1e-6
    assert changed.any()
    ys, xs = torch.nonzero(changed, as_tuple=True)
    box = result.faces.faces[0].box
    w, h = box[2] - box[0], box[3] - box[1]
    # every changed pixel lies near the detected face (the crop covers about 3x the box)
    assert xs.min() >= box[0] - 1.5 * w and xs.max() <= box[2] + 1.5 * w
    assert ys.min() >= box[1] - 1.5 * h and ys.max() <= box[3] + 1.5 * h
    assert not changed[-20:, :].any() and not changed[:, -20:].any()


def test_no_face_passes_through(model, detector):
    image = torch.full((1, 96, 128, 3), 0.5)
    image[:, 40:60, 50:90] = 0.2
    result = restore_images(model, image, detector, None)
    torch.testing.assert_close(result.images, image, atol=0, rtol=0)
    assert len(result.faces) == 0 and "no face found in any image" in result.messages[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_restore_writes_new_file_and_never_overwrites(test_models_dir, astronaut, photos_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    src = out / "astronaut.png"  # the input lives in the output folder
    Image.fromarray(astronaut).save(src)
    taken = out / "astronaut_honestface.png"  # and the default output name is already taken
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(taken)
    before = {p: _sha(p) for p in (src, taken)}
    refs = tmp_path / "refs"
    refs.mkdir()
    for name in ("obama.jpg", "obama3.jpg"):
        (refs / name).write_bytes((photos_dir / name).read_bytes())
    code = cli_main(["restore", str(src), "--refs", str(refs), "--out", str(out), "--models", str(test_models_dir),
                     "--detector", "yunet", "--device", "cpu", "--dtype", "fp32"])
    assert code == 0
    assert {p: _sha(p) for p in (src, taken)} == before
    new = out / "astronaut_honestface_1.png"
    assert new.is_file() and "1 face(s) restored" in capsys.readouterr().out
    restored = np.asarray(Image.open(new))
    assert restored.shape == astronaut.shape and not np.array_equal(restored, astronaut)
    assert np.array_equal(restored[-20:], astronaut[-20:])  # far from the face: untouched
    assert cli_main(["restore", str(src), "--out", str(out), "--models", str(test_models_dir)]) == 2
    assert "--refs" in capsys.readouterr().err


def test_encoded_references_are_cached_on_the_set(model, refs):
    """The cache lives on the set, keyed by the model's backbone (held weakly), device and dtype; a hit reads nothing
    back to the host; another set, a replaced tensor and an in-place edit are encoded again, never stale."""
    first = model.encode_references(refs)
    assert first.embeddings.shape == (2, model.config.identity.embedding_dim) and len(first) == 2
    with HostReads() as mode:
        again = model.encode_references(refs)
    assert mode.calls == [] and again is first
    edited = ReferenceSet(refs.crops.clone(), refs.embeddings.clone(), refs.names, refs.status, refs.encoder_name)
    copy = model.encode_references(edited)
    assert copy is not first and model.encode_references(edited) is copy
    torch.testing.assert_close(copy.features, first.features, atol=0, rtol=0)
    edited.embeddings.mul_(1.0)  # an in-place edit (same values) bumps the version: encoded again
    edited_again = model.encode_references(edited)
    assert edited_again is not copy
    edited.crops = edited.crops.clone()  # a replaced tensor: encoded again
    assert model.encode_references(edited) is not edited_again
    owner = torch.nn.Linear(1, 1)  # any other owner, e.g. a second model's backbone
    assert edited.cached(owner, "key", lambda: 1) == 1 and edited.cached(owner, "key", lambda: 2) == 1
    assert len(edited._cache) == 2
    del owner
    gc.collect()
    assert list(edited._cache) == [model.backbone]  # a freed owner's entries go with it


def test_faces_with_different_references_share_one_unet_batch(model, refs, other_refs, astronaut_crops):
    """Two people and a blind face in one call equal three separate calls, and the UNet runs once for all three."""
    crops = torch.cat([astronaut_crops, astronaut_crops[:1]])
    per_face = [refs, other_refs, None]
    calls = []
    hook = model.generator.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        batch = restore_crops(model, crops, per_face)
        assert calls == [3]
        separate = torch.cat([restore_crops(model, crops[i:i + 1], r) for i, r in enumerate(per_face)])
    finally:
        hook.remove()
    assert calls == [3, 1, 1, 1]
    diff = (batch - separate).abs()  # batched vs single convolutions differ in rounding (see above)
    assert diff.mean() < 2e-4 and diff.max() < 0.05
    # each face really used its own references: another set or none gives another result
    assert (separate[0] - restore_crops(model, crops[:1], other_refs)).abs().max() > 1e-3
    assert (separate[2] - restore_crops(model, crops[2:], refs)).abs().max() > 1e-3


@pytest.mark.parametrize("bad, match", [([None], "list of 1 entries for 2 faces"), (["obama.jpg", None], "hold a str"),
                                        ("obama.jpg", "are a str")])
def test_bad_per_face_references_are_refused(model, astronaut_crops, bad, match):
    with pytest.raises(HonestFaceError, match=match):
        restore_crops(model, astronaut_crops, bad)


def test_restore_images_detects_on_the_input_itself(model, detector, astronaut, monkeypatch):
    """CPU images are detected, aligned and pasted where they are: only the crops go to the model."""
    image = uint8_to_tensor(astronaut)
    seen = []
    real = pipeline.detect_faces
    monkeypatch.setattr(pipeline, "detect_faces", lambda det, imgs, *a, **k: seen.append(imgs) or real(det, imgs, *a, **k))
    restore_images(model, image, detector, None)
    assert len(seen) == 1 and seen[0] is image


def test_fp16_model_keeps_its_vae_in_fp32(test_models_dir):
    """diffusers' force_upcast: the VAE is put back in fp32 after every cast to fp16; the UNet stays fp16."""
    half = load_restorer(test_models_dir, device="cpu", dtype="fp16")
    gen = half.generator
    assert gen.vae.config.force_upcast and half.dtype == torch.float16
    assert gen.unet.dtype == torch.float16 and gen.vae.dtype == torch.float32
    half.to(torch.float16)
    assert gen.vae.dtype == torch.float32
    image = gen.decode(torch.randn(1, 4, 8, 8, dtype=torch.float16))
    assert image.dtype == torch.float32 and torch.isfinite(image).all()
    assert load_restorer(test_models_dir, device="cpu", dtype="bf16").generator.vae.dtype == torch.bfloat16


def test_compile_option_compiles_in_place(test_models_dir):
    """torch.compile of UNet and VAE keeps the modules and their weight names (bundles still load and save)."""
    compiled = load_restorer(test_models_dir, device="cpu", dtype="fp32", compile_modules=True)
    gen = compiled.generator
    plain = load_restorer(test_models_dir, device="cpu", dtype="fp32")
    assert list(gen.state_dict()) == list(plain.generator.state_dict())
    for module in (gen.unet, gen.vae.encoder, gen.vae.decoder):
        assert module._compiled_call_impl is not None
    assert plain.generator.unet._compiled_call_impl is None
