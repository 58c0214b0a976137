"""Identity encoders on real portraits with the real SFace model (checked against OpenCV's own recognizer), and
the similarity / Deg maths."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from honestface_core.face.alignment import align_faces
from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.face.identity import (IdentityEncoder, SFaceEncoder, angle_degrees, cosine_similarity,
                                      to_arcface_crops)
from honestface_core.files.images import uint8_to_tensor

NAMES = ("obama", "obama2", "obama3", "biden")

pytestmark = pytest.mark.opencv  # YuNet crops and OpenCV's SFace as the reference (also run under OpenCV 5)


@pytest.fixture(scope="module")
def aligned(portraits, yunet_detector):
    """name -> (image, largest face, its 512 crop (1, 512, 512, 3))."""
    out = {}
    for n, img in portraits.items():
        face = max(yunet_detector.detect(img), key=lambda f: f.area)
        out[n] = (img, face, align_faces(uint8_to_tensor(img), [face], 512).crops)
    return out


def test_sface_same_person_far_above_different_person(aligned, sface_encoder):
    assert isinstance(sface_encoder, IdentityEncoder)
    emb = sface_encoder.embed(torch.cat([aligned[n][2] for n in NAMES]))
    assert emb.shape == (4, 128) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    sim = cosine_similarity(emb, emb)
    same = [sim[0, 1].item(), sim[0, 2].item(), sim[1, 2].item()]
    diff = [sim[3, i].item() for i in range(3)]
    deg = angle_degrees(emb, emb)
    print(f"\nSFace cosine same person {np.round(same, 3)}, different person {np.round(diff, 3)}; "
          f"margin {min(same) - max(diff):.3f}; Deg obama-obama2 {deg[0, 1]:.1f}, obama-biden {deg[0, 3]:.1f}")
    assert min(same) > max(diff) + 0.25
    assert deg[0, 1] < deg[0, 3] - 15


def _opencv_sface(sface_path):
    """OpenCV's own ``cv2.FaceRecognizerSF`` as the reference. OpenCV 5's dnn rejects the published file (its stale
    weight inputs), so there it reads the same graph with those inputs pruned (all else unchanged)."""
    import cv2

    if int(cv2.__version__.split(".")[0]) < 5:
        return cv2.FaceRecognizerSF.create(str(sface_path), "")
    from honestface_core.files.onnx_sessions import load_onnx, prune_graph_inputs

    model = load_onnx(sface_path)
    prune_graph_inputs(model)
    return cv2.FaceRecognizerSF.create("onnx", np.frombuffer(model.SerializeToString(), np.uint8), np.zeros(0, np.uint8))


def test_sface_reproduces_opencv_face_recognizer(aligned, sface_encoder, sface_path):
    """Same 112 crops: our onnxruntime SFace gives OpenCV FaceRecognizerSF.feature's embedding; batches change nothing."""
    crops = torch.cat([aligned[n][2] for n in NAMES])
    ours = sface_encoder.embed(crops)
    bgr = (to_arcface_crops(crops).flip(1) + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    ref = _opencv_sface(sface_path)
    theirs = torch.from_numpy(np.stack([ref.feature(np.ascontiguousarray(b)).reshape(-1) for b in bgr]))
    cos = torch.diag(cosine_similarity(ours, theirs))
    print(f"\nSFace onnxruntime vs cv2.FaceRecognizerSF on the same crops: cos {np.round(cos.numpy(), 5)}")
    assert (cos > 0.999).all()
    single = torch.cat([sface_encoder.embed(c[None]) for c in crops])
    assert torch.allclose(single, ours, atol=1e-5)


def test_arcface_crop_matches_opencv_aligncrop(aligned, sface_encoder, sface_path):
    """The FFHQ-512 -> ArcFace-112 re-warp reproduces OpenCV's own 5-point alignCrop of the photo."""
    img, face, crop = aligned["obama"]
    row = np.concatenate([face.box[:2], face.box[2:] - face.box[:2], face.kps.reshape(-1), [face.score]]).astype(np.float32)
    ref = _opencv_sface(sface_path)
    theirs = ref.alignCrop(np.ascontiguousarray(img[..., ::-1]), row).astype(np.float32)[..., ::-1]
    ours = to_arcface_crops(crop)[0].permute(1, 2, 0).numpy()
    err = np.abs(ours - theirs).mean()
    print(f"\nmean abs pixel difference vs cv2 alignCrop: {err:.2f} / 255")
    assert ours.shape == (112, 112, 3) and err < 10
    # and the embedding of the re-warped crop is the one SFace computes from OpenCV's crop
    theirs_emb = torch.from_numpy(ref.feature(np.ascontiguousarray(theirs[..., ::-1]).astype(np.uint8)))
    assert cosine_similarity(sface_encoder.embed(crop), theirs_emb).item() > 0.95


def test_any_crop_size_gives_the_same_identity(aligned, sface_encoder):
    img, face, crop = aligned["obama2"]
    small = align_faces(uint8_to_tensor(img), [face], 256).crops
    assert cosine_similarity(sface_encoder.embed(small), sface_encoder.embed(crop)).item() > 0.97


def test_empty_and_bad_crops(sface_encoder):
    assert sface_encoder.embed(torch.zeros(0, 512, 512, 3)).shape == (0, 128)
    with pytest.raises(HonestFaceError, match="crops"):
        sface_encoder.embed(torch.zeros(2, 512, 256, 3))
    with pytest.raises(HonestFaceError, match="crops"):
        sface_encoder.embed(torch.zeros(512, 512, 3))


def test_sface_missing_file(tmp_path):
    with pytest.raises(MissingModelError) as err:
        SFaceEncoder(tmp_path / "face_recognition_sface_2021dec.onnx")
    assert err.value.filename == "face_recognition_sface_2021dec.onnx" and err.value.folder == str(tmp_path)


def test_sface_damaged_or_wrong_file(tmp_path):
    from honestface_core.testing.insightface_packs import write_insightface_test_models

    damaged = tmp_path / "face_recognition_sface_2021dec.onnx"
    damaged.write_bytes(b"\x08\x07garbage")
    with pytest.raises(HonestFaceError, match="cannot be read"):
        SFaceEncoder(damaged)
    write_insightface_test_models(tmp_path, packs=("buffalo_l",))  # an ArcFace file: (N,3,112,112) -> 512
    for wrong in ("det_10g.onnx", "w600k_r50.onnx"):
        with pytest.raises(HonestFaceError, match="is not an SFace recognizer"):
            SFaceEncoder(tmp_path / "insightface" / "models" / "buffalo_l" / wrong)


def test_sface_logs_its_provider_once(sface_path, tmp_path, caplog):
    copy = tmp_path / "face_recognition_sface_2021dec.onnx"  # a path no other test has logged yet
    copy.write_bytes(sface_path.read_bytes())
    with caplog.at_level(logging.INFO, logger="honestface_core.files.onnx_sessions"):
        SFaceEncoder(copy)
        SFaceEncoder(copy)
    lines = [r.getMessage() for r in caplog.records if r.name == "honestface_core.files.onnx_sessions"]
    assert lines == [f"ONNX model {copy.name} runs on ['CPUExecutionProvider']"]


def test_cosine_and_angle_maths():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    b = torch.tensor([1.0, 1.0])
    cos = cosine_similarity(a, b)
    assert cos.shape == (3, 1)
    assert torch.allclose(cos[:, 0], torch.tensor([1 / math.sqrt(2), 1 / math.sqrt(2), -1 / math.sqrt(2)]))
    deg = angle_degrees(a, a)
    expected = torch.tensor([[0.0, 90.0, 180.0], [90.0, 0.0, 90.0], [180.0, 90.0, 0.0]])
    assert torch.allclose(deg, expected, atol=0.05)
    assert not torch.isnan(angle_degrees(a * 1e3, a)).any()  # clamped, never NaN
    with pytest.raises(HonestFaceError, match="dimensions differ"):
        cosine_similarity(torch.zeros(2, 3), torch.zeros(2, 4))


def test_angle_of_an_embedding_with_itself_is_zero_on_any_cpu():
    """float32 arccos near cos = 1 has a 0.02-degree floor that a 1-ulp rounding of the dot product decides
    (measured: 26 of these 64 gave 0.02-0.06 degrees). With the float64 cosine: measured <= 3e-6 degrees; even a
    worst-case 512-term float64 rounding (1 - cos <= 6e-14) stays below 2e-5 degrees."""
    e = torch.randn(64, 512, generator=torch.Generator().manual_seed(0))
    deg = angle_degrees(e, e)
    assert deg.dtype == torch.float32 and deg.diag().max() < 1e-4
    assert torch.stack([angle_degrees(x, x)[0, 0] for x in e]).max() < 1e-4  # one by one: another summation order


def test_embed_largest_faces_batch_and_photos_of_any_size(portraits, yunet_detector, sface_encoder, aligned):
    """One batch with a faceless image, then photos of different sizes: rows match embedding each largest face's
    512 crop directly, the faceless image is reported missing, indices count across the photos."""
    from honestface_core.face.identity import embed_largest_faces

    obama = uint8_to_tensor(portraits["obama"])
    batch = torch.cat([obama, torch.full_like(obama, 0.5)])
    found = embed_largest_faces(batch, yunet_detector, sface_encoder)
    assert found.image_index == [0] and found.missing == [1] and found.embeddings.shape == (1, sface_encoder.dim)
    torch.testing.assert_close(found.embeddings, sface_encoder.embed(aligned["obama"][2]), rtol=0, atol=1e-5)
    photos = [uint8_to_tensor(portraits[n]) for n in ("biden", "obama2")] + [torch.full((1, 64, 96, 3), 0.5)]
    assert len({p.shape for p in photos}) == 3
    found = embed_largest_faces(photos, yunet_detector, sface_encoder, size=256)
    assert found.image_index == [0, 1] and found.missing == [2]
    direct = sface_encoder.embed(torch.cat([aligned[n][2] for n in ("biden", "obama2")]))
    assert (cosine_similarity(found.embeddings, direct).diagonal() > 0.99).all()  # 256 vs 512 crops: same identity
    none = embed_largest_faces(torch.full((2, 64, 64, 3), 0.5), yunet_detector, sface_encoder)
    assert none.embeddings.shape == (0, sface_encoder.dim) and none.image_index == [] and none.missing == [0, 1]
