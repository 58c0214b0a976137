"""``honestface bench-pasteback``: align + paste-back against facexlib's ``FaceRestoreHelper`` on the same landmarks.

Scenes are built from one real photo (default: insightface's ``t1.jpg``, six people): its YuNet 5-point
landmarks are detected once; the photo is resized to each size (1 face: the largest; 6 faces: the photo; 36 faces:
the photo tiled 3 x 2) and the landmarks scaled with it. Both sides get the same landmarks and do the same work:
align every face to the 512 FFHQ template, then paste the unchanged crops back with a feathered mask.

- ours: :func:`~honestface_core.face.alignment.align_faces` + :func:`~honestface_core.face.pasteback.paste_back` on the
  ``(1, H, W, 3)`` float32 tensor (the ComfyUI IMAGE the pipeline holds);
- facexlib: ``all_landmarks_5`` set directly, then ``align_warp_face``, ``add_restored_face``,
  ``get_inverse_affine``, ``paste_faces_to_input_image`` on the uint8 BGR array it works on (its detection and
  parsing networks are not loaded: they are not timed).

Each repeat runs both sides back to back (order alternating), and the ratio ours / facexlib is taken per repeat
(paired, so slow phases of a shared machine cancel); the table shows median times, the median ratio, its quartiles
and in how many repeats ours was faster, with a warning where the quartiles lie on both sides of 1 (too spread to
conclude; our rule). torch and OpenCV get the same thread count. The round trip
of our side (crops pasted back unchanged) is reported too: mean and 99th-percentile change inside the pasted
region, largest change outside it (must be 0), in grey levels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from honestface_core.errors import HonestFaceError

SIZES_MP = (0.5, 1.0, 4.0, 12.0, 20.0)
FACE_COUNTS = (1, 6, 36)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bench-pasteback", help="align + paste-back time against facexlib's FaceRestoreHelper",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(f"{s:g}" for s in SIZES_MP), help="image sizes in megapixels")
    p.add_argument("--faces", default=",".join(map(str, FACE_COUNTS)), help="face counts (1, 6 or 36)")
    p.add_argument("--threads", default="1,2", help="torch / OpenCV thread counts to measure")
    p.add_argument("--repeats", type=int, default=5, help="paired repeats per case (medians are reported)")
    p.add_argument("--photo", default=None, help="photo with faces (default: insightface's data/images/t1.jpg)")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this new file")
    p.set_defaults(func=_cmd)


def _ints_or_floats(text: str, kind, what: str) -> list:
    try:
        values = [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError as err:
        raise HonestFaceError(what, f"'{text}' is not a comma-separated list of numbers", "e.g. 0.5,1,4") from err
    if not values or min(values) <= 0:
        raise HonestFaceError(what, f"'{text}' needs positive numbers", "e.g. 0.5,1,4")
    return values


def source_photo(photo: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The photo (RGB uint8) and its faces' 5-point landmarks ``(F, 5, 2)``, left to right (YuNet, bundled copy)."""
    from honestface_core.face.detection import build_detector, sort_faces
    from honestface_core.files.images import load_image
    from honestface_core.files.model_paths import default_models_dir

    if photo is None:
        import insightface

        photo = str(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg")
    detector = build_detector(default_models_dir(), "yunet")  # names the file and folder when YuNet is missing
    img = load_image(photo)
    faces = sort_faces(detector.detect(img))
    if not faces:
        raise HonestFaceError(f"photo '{photo}'", "has no face YuNet finds", "Use a photo with faces")
    return img, np.stack([f.kps for f in faces]).astype(np.float64)


def make_scene(img: np.ndarray, kps: np.ndarray, megapixels: float, faces: int) -> tuple[np.ndarray, np.ndarray]:
    """``img`` resized to ``megapixels`` with ``faces`` faces' landmarks: 1 (the largest), all, or 6x all (tiled 3 x 2)."""
    import cv2

    if faces == len(kps) * 6:
        h, w = img.shape[:2]
        img = np.tile(img, (2, 3, 1))
        kps = np.concatenate([kps + [w * (k % 3), h * (k // 3)] for k in range(6)])
    elif faces == 1:
        kps = kps[[int(np.argmax(np.ptp(kps[..., 0], axis=1)))]]
    elif faces != len(kps):
        raise HonestFaceError("faces", f"{faces} is not 1, {len(kps)} or {6 * len(kps)} for this photo", "Use those counts")
    f = (megapixels * 1e6 / (img.shape[0] * img.shape[1])) ** 0.5
    size = (round(img.shape[1] * f), round(img.shape[0] * f))
    out = cv2.resize(img, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
    scale = np.array([size[0] / img.shape[1], size[1] / img.shape[0]])
    return out, (kps + 0.5) * scale - 0.5


def facexlib_helper():
    """facexlib's ``FaceRestoreHelper`` (512, no upscale, square mask) without its detection / parsing networks."""
    import facexlib.utils.face_restoration_helper as frh

    saved = frh.init_detection_model, frh.init_parsing_model
    frh.init_detection_model = frh.init_parsing_model = lambda *a, **k: None
    try:
        return frh.FaceRestoreHelper(1, face_size=512, use_parse=False, device="cpu")
    finally:
        frh.init_detection_model, frh.init_parsing_model = saved


def run_facexlib(helper, bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
    helper.clean_all()
    helper.read_image(bgr)
    helper.all_landmarks_5 = [k.astype(np.float32) for k in kps]
    helper.align_warp_face()
    for crop in helper.cropped_faces:
        helper.add_restored_face(crop)
    helper.get_inverse_affine()
    return helper.paste_faces_to_input_image()


def run_ours(x, faces):
    from honestface_core.face.alignment import align_faces
    from honestface_core.face.pasteback import paste_back

    al = align_faces(x, faces)
    return paste_back(x, al.crops, al.matrices, al.image_index), al


def round_trip(x, out, al) -> dict:
    """Grey-level change of the unchanged-crop round trip inside / outside the pasted region."""
    import torch

    from honestface_core.face.pasteback import paste_back

    ones = torch.ones_like(al.crops)
    support = paste_back(torch.zeros_like(x), ones, al.matrices, al.image_index).amax(-1) > 0
    diff = (out - x).abs().amax(-1) * 255
    inside = diff[support]
    return {"inside_mean": float(inside.mean()), "inside_p99": float(inside.float().quantile(0.99)) if inside.numel() < 2 ** 24
            else float(inside[:: max(1, inside.numel() // 2 ** 23)].quantile(0.99)),
            "outside_max": float(diff[~support].max()) if (~support).any() else 0.0}


def bench_case(img, kps, threads: int, repeats: int, helper) -> dict:
    import cv2
    import torch

    from honestface_core.face.detection import DetectedFace
    from honestface_core.files.images import uint8_to_tensor

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    x = uint8_to_tensor(img)
    bgr = np.ascontiguousarray(img[..., ::-1])
    faces = [DetectedFace(0, np.r_[k.min(0), k.max(0)].astype(np.float32), 1.0, k.astype(np.float32)) for k in kps]
    out, al = run_ours(x, faces)  # warm-up of both sides
    quality = round_trip(x, out, al)
    del out, al
    run_facexlib(helper, bgr, kps)
    ours, theirs = [], []
    for r in range(repeats):
        sides = [("ours", lambda: run_ours(x, faces)), ("facexlib", lambda: run_facexlib(helper, bgr, kps))]
        for name, fn in sides if r % 2 == 0 else sides[::-1]:
            t = time.perf_counter()
            fn()
            (ours if name == "ours" else theirs).append(time.perf_counter() - t)
    ratios = sorted(a / b for a, b in zip(ours, theirs))
    q1, q3 = (float(np.percentile(ratios, q)) for q in (25, 75))
    return {"megapixels": img.shape[0] * img.shape[1] / 1e6, "faces": len(kps), "threads": threads,
            "ours_s": statistics.median(ours), "facexlib_s": statistics.median(theirs),
            "ratio": statistics.median(ratios), "ratio_q1": q1, "ratio_q3": q3, "ratio_min": ratios[0],
            "ratio_max": ratios[-1], "ours_faster": sum(r < 1 for r in ratios), "repeats": repeats, **quality}


def _cmd(args: argparse.Namespace) -> int:
    from honestface_core.files.outputs import check_new_file, write_file

    sizes = _ints_or_floats(args.sizes, float, "--sizes")
    counts = _ints_or_floats(args.faces, int, "--faces")
    threads = _ints_or_floats(args.threads, int, "--threads")
    if args.repeats < 1:
        raise HonestFaceError("--repeats", f"{args.repeats} is not positive", "Use 1 or more")
    if args.json:
        check_new_file(args.json, "--json")
    img, kps = source_photo(args.photo)
    helper = facexlib_helper()
    from honestface_core.cli.bench import cpu_name

    print(f"{cpu_name()}; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}, "
          f"{os.cpu_count()} CPUs; "
          f"{args.repeats} paired repeats; ratio = ours / facexlib (below 1: ours faster)")
    print(f"{'MP':>5} {'faces':>5} {'thr':>3} {'ours s':>8} {'facexlib s':>10} {'ratio':>6} {'[q1..q3]':>13} {'faster':>6} "
          f"{'in mean':>7} {'in p99':>6} {'out max':>7}")
    rows = []
    for mp in sizes:
        for n in counts:
            scene, scene_kps = make_scene(img, kps, mp, n)
            for t in threads:
                row = bench_case(scene, scene_kps, t, args.repeats, helper)
                rows.append(row)
                wide = "  spread too wide to conclude" if row["ratio_q1"] < 1 < row["ratio_q3"] else ""
                wins = f"{row['ours_faster']}/{row['repeats']}"
                print(f"{row['megapixels']:5.1f} {n:5d} {t:3d} {row['ours_s']:8.3f} {row['facexlib_s']:10.3f} "
                      f"{row['ratio']:6.2f} [{row['ratio_q1']:.2f}..{row['ratio_q3']:.2f}] {wins:>6} {row['inside_mean']:7.3f} "
                      f"{row['inside_p99']:6.2f} {row['outside_max']:7.1f}{wide}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}; slowest ratio {max(r['ratio'] for r in rows):.2f}")
    if args.json:
        write_file(args.json, json.dumps({"load_average": os.getloadavg(), "rows": rows}, indent=1).encode(), "--json")
    return 0
