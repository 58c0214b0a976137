"""Alignment maths (similarity fit, exact inverse, pixel-exact torch warp) and real-photo alignment quality."""

from __future__ import annotations

import numpy as np
import torch

from honestface_core.face.alignment import align_faces
from honestface_core.geometry import ARCFACE_TEMPLATE_112, FFHQ_TEMPLATE_512, estimate_similarity, invert_affine, template_for_size, warp_affine
from honestface_core.face.detection import DetectedFace, YuNetDetector, detect_faces
from honestface_core.files.images import load_image, uint8_to_tensor


def _apply(m, pts):
    return pts @ m[:, :2].T + m[:, 2]


def test_similarity_recovers_known_transform_and_is_least_squares():
    rng = np.random.default_rng(1)
    ang, s, t = 0.4, 2.3, np.array([13.0, -7.5])
    true = np.hstack([s * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]), t[:, None]])
    src = rng.normal(size=(5, 2)) * 40
    assert np.allclose(estimate_similarity(src, _apply(true, src)), true, atol=1e-9)
    # with noise the fit beats small perturbations of itself (least squares)
    dst = _apply(true, src) + rng.normal(size=(5, 2))
    m = estimate_similarity(src, dst)
    base = ((_apply(m, src) - dst) ** 2).sum()
    for _ in range(20):
        p = m + rng.normal(size=(2, 3)) * 1e-3
        p[:, :2] = m[:, :2] + (lambda a, b: np.array([[a, -b], [b, a]]))(*rng.normal(size=2) * 1e-3)
        assert ((_apply(p, src) - dst) ** 2).sum() >= base
    # mirrored points give a rotation, never a reflection
    assert np.linalg.det(estimate_similarity(src, src * [-1, 1])[:, :2]) > 0
    assert np.allclose(template_for_size(256), FFHQ_TEMPLATE_512 / 2) and ARCFACE_TEMPLATE_112.shape == (5, 2)


def test_invert_affine_numpy_torch_batches():
    rng = np.random.default_rng(2)
    m = rng.normal(size=(4, 2, 3)) + np.array([[1.0, 0, 0], [0, 1.0, 0]])
    inv = invert_affine(m)
    pts = rng.normal(size=(7, 2)) * 100
    for a, b in zip(m, inv):
        assert np.allclose(_apply(b, _apply(a, pts)), pts, atol=1e-8)
    assert torch.allclose(invert_affine(torch.from_numpy(m)), torch.from_numpy(inv))
    assert np.allclose(invert_affine(invert_affine(m)), m)


def test_warp_is_pixel_exact_on_linear_images():
    """Bilinear sampling reproduces linear functions exactly, so the warp must equal f(M^-1(x)) to float error."""
    h, w = 37, 53
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    img = torch.stack([0.3 * xx + 0.1 * yy + 2, -0.2 * xx + 0.5 * yy, 0.05 * xx * 0 + 1.0])[None]
    m = np.array([[0.9, 0.2, -3.0], [-0.15, 1.1, 2.5]])
    out = warp_affine(img, torch.from_numpy(m)[None], (30, 40), padding_mode="zeros")[0]
    inv = invert_affine(m)
    v, u = np.meshgrid(np.arange(30), np.arange(40), indexing="ij")
    src = _apply(inv, np.stack([u.ravel(), v.ravel()], 1).astype(float))
    inside = (src[:, 0] >= 0) & (src[:, 0] <= w - 1) & (src[:, 1] >= 0) & (src[:, 1] <= h - 1)
    expect = 0.3 * src[:, 0] + 0.1 * src[:, 1] + 2
    got = out[0].numpy().ravel()
    assert inside.sum() > 500 and np.abs(got[inside] - expect[inside]).max() < 1e-9


def test_warp_roundtrip_and_batched_index():
    rng = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 40, 48, generator=rng, dtype=torch.float64)
    imgs = torch.nn.functional.avg_pool2d(imgs, 3, 1, 1)  # smooth enough for two resamplings
    m = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],            # identity on image 1
                      [[0.8, 0.1, 4.0], [-0.1, 0.8, 3.0]],            # similarity on image 0
                      [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)  # identity on image 0
    idx = torch.tensor([1, 0, 0])
    out = warp_affine(imgs, m, (40, 48), idx)
    assert torch.allclose(out[0], imgs[1], atol=1e-12) and torch.allclose(out[2], imgs[0], atol=1e-12)
    # integer translation is exact
    t = torch.tensor([[[1.0, 0, 3.0], [0, 1.0, -2.0]]], dtype=torch.float64)
    moved = warp_affine(imgs[:1], t, (40, 48), padding_mode="zeros")[0]
    assert torch.allclose(moved[:, :38, 3:], imgs[0, :, 2:40, :45], atol=1e-12)  # dst(x, y) = src(x - 3, y + 2)
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
    # wavelengths long enough that two bilinear resamplings stay well inside the bound (measured 0.009; periods
    # 1.5x shorter gave 0.019), short enough that a quarter-pixel offset of the way back fails it (0.034-0.042)
    waves = [torch.sin(xx / 7.5) * torch.cos(yy / 9), torch.cos(xx / 10.5), torch.sin(yy / 6)]
    smooth = torch.stack(waves)[None].double()
    there = warp_affine(smooth, m[1:2], (40, 48))
    back = warp_affine(there, invert_affine(m[1:2]), (40, 48))[0]
    assert (back - smooth[0])[:, 8:-8, 8:-8].abs().max() < 0.02


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
