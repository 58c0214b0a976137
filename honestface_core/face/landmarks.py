"""Dense landmark detectors behind one interface, for the landmark metrics (docs/design.md §3).

Every detector takes FFHQ-aligned face crops ``(N, S, S, 3)`` float [0, 1] (what
:func:`honestface_core.face.alignment.align_faces` returns) and returns :class:`Landmarks`: ``(N, P, 2)`` float64
``(x, y)`` in crop pixels, a NaN row where no face / no landmarks were found, and the scheme name that the
region tables of :mod:`honestface_core.metrics.schemes` use.

Backends:

- ``wflw98``: facexlib AWing FAN (``models/facexlib/alignment_WFLW_4HG.pth``), the detector prior work used
  for LMD. It runs on the whole crop (it was trained on face crops) and never reports "no face".
- ``ins106`` / ``ins68``: insightface ``2d106det`` / ``1k3d68`` from a loaded ``FaceAnalysis``; the pack's
  detector finds the face box in the crop first (no box -> NaN row).
- ``dlib68``: dlib's 68-point shape predictor (``models/landmarks/shape_predictor_68_face_landmarks.dat`` or the
  copy in the ``face-recognition-models`` package, with ``dlib-bin``): works with no downloaded weights. dlib's
  HOG face detector finds the box in the crop (no box -> NaN row).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from honestface_core.face.alignment import check_aligned_crops
from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.files.images import tensor_to_uint8

DLIB68_FILE = "shape_predictor_68_face_landmarks.dat"
DLIB68_FOLDER = "landmarks"


@dataclass
class Landmarks:
    """Landmarks of N crops: ``points`` ``(N, P, 2)`` float64 crop pixels (NaN rows: not found), ``scheme`` name,
    ``size`` the crop side they refer to."""

    points: np.ndarray
    scheme: str
    size: int

    @property
    def found(self) -> np.ndarray:
        """``(N,)`` bool: landmarks were found for that crop."""
        return ~np.isnan(self.points).any(axis=(1, 2))


@runtime_checkable
class LandmarkDetector(Protocol):
    """``detect(crops (N, S, S, 3) float [0, 1]) -> Landmarks`` with a fixed ``scheme`` and ``num_points``."""

    name: str
    scheme: str
    num_points: int

    def detect(self, crops: torch.Tensor) -> Landmarks: ...


def _largest_central(boxes: np.ndarray, size: int) -> int:
    """Index of the box to use in an aligned crop: the largest, ties broken by distance to the centre."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centre = np.hypot((boxes[:, 0] + boxes[:, 2]) / 2 - size / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - size / 2)
    return int(np.lexsort((centre, -area))[0])


class DlibLandmarks:
    """dlib 68-point shape predictor (iBUG scheme) with dlib's HOG frontal face detector on each crop.

    The HOG detector upsamples the crop ``upsample`` times (0 is enough for 512 crops, where the face spans about
    half the crop); the largest box is used (our choice).
    """

    name = "dlib68"
    scheme = "dlib68"
    num_points = 68

    def __init__(self, predictor_path: str | os.PathLike, upsample: int = 0):
        try:
            import dlib
        except ImportError as err:
            raise HonestFaceError("dlib landmarks", "the 'dlib' module is not installed",
                                  "pip install dlib-bin face-recognition-models (the 'eval' extra)") from err
        path = os.fspath(predictor_path)
        if not os.path.isfile(path):
            raise MissingModelError(os.path.basename(path), os.path.dirname(path) or ".",
                                    "http://dlib.net/files/ or `pip install face-recognition-models`")
        try:
            self._predictor = dlib.shape_predictor(path)
        except RuntimeError as err:
            raise HonestFaceError(f"dlib model '{path}'", f"cannot be read ({err})",
                                  f"Use dlib's {DLIB68_FILE}") from err
        self._detector = dlib.get_frontal_face_detector()
        self._dlib = dlib
        self.upsample = int(upsample)

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike, **kwargs) -> "DlibLandmarks":
        """``models_dir/landmarks/shape_predictor_68_face_landmarks.dat``, else the face-recognition-models copy."""
        from honestface_core.files.model_paths import find_model_file_or_bundled

        return cls(find_model_file_or_bundled(models_dir, DLIB68_FOLDER, DLIB68_FILE), **kwargs)

    def detect(self, crops: torch.Tensor) -> Landmarks:
        crops = check_aligned_crops(crops)
        size = int(crops.shape[1])
        out = np.full((crops.shape[0], 68, 2), np.nan)
        for i, img in enumerate(tensor_to_uint8(crops)):
            rects = self._detector(img, self.upsample)
            if not len(rects):
                continue
            boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], float)
            shape = self._predictor(img, rects[_largest_central(boxes, size)])
            out[i] = [(p.x, p.y) for p in shape.parts()]
        return Landmarks(out, self.scheme, size)


class AWingLandmarks:
    """facexlib AWing FAN, 98 WFLW points, batched on the crops' device.

    Same preprocessing as facexlib's ``get_landmarks`` (whole crop resized to 256, RGB in [0, 1]) and the same
    heat-map decoding (arg-max, quarter-pixel step towards the larger neighbour, +0.5), done here per point
    because facexlib's ``calculate_points`` uses ``np.float`` (removed in numpy 1.24) and clamps neighbours
    batch-wide.
    """

    name = "awing_fan"
    scheme = "wflw98"
    num_points = 98

    def __init__(self, model: torch.nn.Module, batch_size: int = 8):
        self.model = model.eval()
        self.batch_size = int(batch_size)

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike, device: str | torch.device = "cpu") -> "AWingLandmarks":
        from honestface_core.files.facexlib_models import load_awing

        return cls(load_awing(models_dir, device))

    @torch.no_grad()
    def detect(self, crops: torch.Tensor) -> Landmarks:
        crops = check_aligned_crops(crops)
        size = int(crops.shape[1])
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, crops.shape[0], self.batch_size):
            x = crops[i:i + self.batch_size].permute(0, 3, 1, 2).to(device, torch.float32)
            # facexlib feeds uint8-rounded pixels; round so the output matches its get_landmarks
            x = (x.clamp(0, 1) * 255).round() / 255
            x = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False, antialias=size > 512)
            heat = self.model(x)[0][-1][:, :-1].float()
            out.append((decode_heatmaps(heat) * (size / heat.shape[-1])).cpu().double().numpy())
        points = np.concatenate(out) if out else np.zeros((0, 98, 2))
        return Landmarks(points, self.scheme, size)


def decode_heatmaps(heat: torch.Tensor) -> torch.Tensor:
    """``(B, P, H, W)`` heat maps -> ``(B, P, 2)`` heat-map pixel coordinates: arg-max plus a quarter-pixel step
    towards the larger neighbour in x and y, plus 0.5 (AWing's decoding)."""
    b, p, h, w = heat.shape
    flat = heat.reshape(b, p, h * w)
    idx = flat.argmax(-1)
    y, x = idx // w, idx % w

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat.gather(-1, (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).unsqueeze(-1)).squeeze(-1)

    dx = torch.sign(at(y, x + 1) - at(y, x - 1)) * 0.25
    dy = torch.sign(at(y + 1, x) - at(y - 1, x)) * 0.25
    return torch.stack([x + dx + 0.5, y + dy + 0.5], -1)


class InsightFaceLandmarks:
    """insightface ``2d106det`` (``ins106``) or ``1k3d68`` (``ins68``, x/y of the 3-D points) from a loaded
    ``FaceAnalysis``; the pack's own detector finds the face box in each crop."""

    _TASKS = {"ins106": ("landmark_2d_106", 106), "ins68": ("landmark_3d_68", 68)}

    def __init__(self, face_analysis, scheme: str = "ins106"):
        if scheme not in self._TASKS:
            raise HonestFaceError("scheme", f"{scheme!r} is not an insightface landmark scheme", "Use 'ins106' or 'ins68'")
        task, self.num_points = self._TASKS[scheme]
        models = getattr(face_analysis, "models", None)
        if not isinstance(models, dict) or task not in models:
            file = "2d106det.onnx" if scheme == "ins106" else "1k3d68.onnx"
            raise HonestFaceError("insightface model", f"the loaded pack has no '{task}' model",
                                  f"Put {file} in the pack folder (antelopev2 / buffalo_l ship it) and reload it")
        if "detection" not in models:
            raise HonestFaceError("insightface model", "the loaded pack has no detection model",
                                  "Load the pack with its detector")
        self._model = models[task]
        self._det = models["detection"]
        self.scheme = self.name = scheme

    def detect(self, crops: torch.Tensor) -> Landmarks:
        from insightface.app.common import Face

        crops = check_aligned_crops(crops)
        size = int(crops.shape[1])
        out = np.full((crops.shape[0], self.num_points, 2), np.nan)
        for i, img in enumerate(tensor_to_uint8(crops)):
            bgr = np.ascontiguousarray(img[..., ::-1])
            boxes, _ = self._det.detect(bgr, max_num=0, metric="default")
            if boxes is None or not len(boxes):
                continue
            face = Face(bbox=boxes[_largest_central(boxes[:, :4], size), :4])
            pts = np.asarray(self._model.get(bgr, face), np.float64)
            out[i] = pts[:, :2]
        return Landmarks(out, self.scheme, size)


LANDMARK_CHOICES = ("dlib68", "wflw98", "ins106", "ins68")


def load_landmark_detector(kind: str, models_dir: str | os.PathLike, device: str | torch.device = "cpu",
                           insightface_pack: str = "antelopev2") -> LandmarkDetector:
    """Build a detector by scheme name (``dlib68``, ``wflw98``, ``ins106``, ``ins68``) from a ``models/`` folder."""
    if kind == "dlib68":
        return DlibLandmarks.from_models_dir(models_dir)
    if kind == "wflw98":
        return AWingLandmarks.from_models_dir(models_dir, device)
    if kind in ("ins106", "ins68"):
        from honestface_core.files.insightface_models import load_face_analysis

        app = load_face_analysis(models_dir, insightface_pack,
                                 allowed_modules=("detection", "landmark_2d_106" if kind == "ins106" else "landmark_3d_68"))
        return InsightFaceLandmarks(app, kind)
    raise HonestFaceError("landmarks", f"unknown landmark detector {kind!r}", f"Use one of {', '.join(LANDMARK_CHOICES)}")


def draw_landmark_overlay(crops: torch.Tensor, gt_points: np.ndarray, pred_points: np.ndarray,
                          radius: int | None = None) -> torch.Tensor:
    """Draw ground-truth (green) and restored (red) landmarks with a line between each pair on ``crops``
    ``(N, S, S, 3)``; NaN rows draw nothing. Returns a new ``(N, S, S, 3)`` float tensor in [0, 1]."""
    import cv2

    from honestface_core.files.images import uint8_to_tensor

    crops = check_aligned_crops(crops)
    r = radius or max(1, round(crops.shape[1] / 256))
    out = []
    for img, g, p in zip(tensor_to_uint8(crops), np.asarray(gt_points, float), np.asarray(pred_points, float)):
        img = img.copy()
        for pts_pair in zip(g, p):
            if np.isnan(pts_pair).any():
                continue
            (gx, gy), (px, py) = (tuple(int(round(v)) for v in pt) for pt in pts_pair)
            cv2.line(img, (gx, gy), (px, py), (255, 255, 0), 1, cv2.LINE_AA)
        for pts, colour in ((g, (0, 255, 0)), (p, (255, 0, 0))):
            for x, y in pts:
                if np.isfinite(x) and np.isfinite(y):
                    cv2.circle(img, (int(round(x)), int(round(y))), r, colour, -1, cv2.LINE_AA)
        out.append(img)
    if not out:
        return crops.new_zeros(crops.shape)
    return uint8_to_tensor(np.stack(out)).to(crops.device)
