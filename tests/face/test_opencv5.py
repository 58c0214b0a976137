"""Every OpenCV path under OpenCV 5 as well: the tests marked ``opencv`` re-run in a subprocess with the
opencv-python-headless 5.x that ``scripts/fetch_test_assets.sh`` puts in ``.cache/opencv5`` first on PYTHONPATH
(the venv keeps OpenCV 4 through constraints.txt), and YuNet + SFace under 5.x against OpenCV 4's own results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
OPENCV5 = REPO / ".cache" / "opencv5"
NAMES = ("obama", "obama2", "obama3", "biden")


def _env_opencv5() -> dict[str, str]:
    if not (OPENCV5 / "cv2").is_dir():
        pytest.fail(f"OpenCV 5 is missing from {OPENCV5}: run `bash scripts/setup.sh --test`")
    path = os.pathsep.join(p for p in (str(OPENCV5), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, HONESTFACE_EXPECT_OPENCV="5", OMP_NUM_THREADS="1")


@pytest.mark.opencv
def test_cv2_major_version_of_this_run():
    expected = os.environ.get("HONESTFACE_EXPECT_OPENCV")
    if not expected:
        pytest.skip("checked inside the OpenCV 5 re-run (test_opencv_tests_pass_under_opencv5)")
    import cv2

    assert cv2.__version__.split(".")[0] == expected and Path(cv2.__file__).is_relative_to(OPENCV5)


def test_opencv_tests_pass_under_opencv5(tmp_path):
    junit = tmp_path / "opencv5.xml"
    # only the files that mark tests (collecting the whole suite would take longer than running these)
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                   if "pytest.mark.opencv" in p.read_text(encoding="utf-8"))
    cmd = [sys.executable, "-m", "pytest", *files, "-m", "opencv and not slow", "-q",
           "-p", "no:cacheprovider", f"--junitxml={junit}", f"--basetemp={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env_opencv5(), capture_output=True, text=True, timeout=540)
    print(proc.stdout[-1500:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    cases = ET.parse(junit).getroot().iter("testcase")
    outcome = {f"{c.get('classname')}.{c.get('name')}": [child.tag for child in c] for c in cases}
    assert outcome["tests.face.test_opencv5.test_cv2_major_version_of_this_run"] == []  # ran, and passed: cv2 5.x
    passed = [name for name, tags in outcome.items() if not tags]
    assert len(passed) >= 20 and any("test_identity" in n for n in passed) and any("test_detection" in n for n in passed)


_CHILD = """
import json, sys
import numpy as np, torch, cv2
from pathlib import Path
from honestface_core.face.alignment import align_faces
from honestface_core.face.detection import YuNetDetector
from honestface_core.face.identity import SFaceEncoder, to_arcface_crops
from honestface_core.files.images import load_image, uint8_to_tensor

photos, yunet, sface, out = map(Path, sys.argv[1:5])
det, enc = YuNetDetector(yunet), SFaceEncoder(sface)
kps, crops = [], []
for name in {names!r}:
    img = load_image(photos / f"{{name}}.jpg")
    face = max(det.detect(img), key=lambda f: f.area)
    kps.append(face.kps)
    crops.append(align_faces(uint8_to_tensor(img), [face], 512).crops)
crops = torch.cat(crops)
np.savez(out, kps=np.stack(kps), emb=enc.embed(crops).numpy(), small=to_arcface_crops(crops).numpy())
print(json.dumps({{"cv2": cv2.__version__}}))
"""


def test_yunet_and_sface_under_opencv5_match_opencv4(tmp_path, photos_dir, yunet_path, sface_path, yunet_detector):
    """Our YuNet + SFace pipeline run under OpenCV 5 gives OpenCV 4's landmarks, and embeddings that match
    ``cv2.FaceRecognizerSF`` of OpenCV 4 on the same crops (cosine > 0.99) and separate the two people."""
    import cv2

    from honestface_core.face.identity import cosine_similarity

    if not cv2.__version__.startswith("4."):
        pytest.fail(f"the venv must keep OpenCV 4 (constraints.txt), found {cv2.__version__}")
    out = tmp_path / "opencv5.npz"
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(names=NAMES), str(photos_dir), str(yunet_path),
                           str(sface_path), str(out)], cwd=REPO, env=_env_opencv5(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["cv2"].startswith("5.")
    five = np.load(out)

    from honestface_core.files.images import load_image

    kps4 = np.stack([max(yunet_detector.detect(load_image(photos_dir / f"{n}.jpg")), key=lambda f: f.area).kps
                     for n in NAMES])
    assert np.abs(kps4 - five["kps"]).max() < 0.5
    emb5 = torch.from_numpy(five["emb"])
    recognizer4 = cv2.FaceRecognizerSF.create(str(sface_path), "")  # OpenCV 4's own SFace on the published file
    bgr = np.clip(five["small"][:, ::-1] + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    ref4 = torch.from_numpy(np.stack([recognizer4.feature(np.ascontiguousarray(b)).reshape(-1) for b in bgr]))
    cos = torch.diag(cosine_similarity(emb5, ref4))
    print(f"\nSFace under OpenCV 5 vs cv2.FaceRecognizerSF of OpenCV {cv2.__version__}: cos {np.round(cos.numpy(), 5)}")
    assert (cos > 0.99).all()
    sim = cosine_similarity(emb5, emb5)
    assert min(sim[0, 1], sim[0, 2], sim[1, 2]) > max(sim[3, :3]) + 0.25  # obama x3 vs biden
