"""Custom ComfyUI type names of the pack, the inputs several nodes share, and the choice of detector / identity
encoder from a node's inputs."""

from __future__ import annotations

from dataclasses import dataclass

from honestface_core.face.detection import FaceDetector, InsightFaceDetector, RetinaFaceDetector, YuNetDetector
from honestface_core.errors import HonestFaceError
from honestface_core.face.identity import ArcFaceEncoder, IdentityEncoder, SFaceEncoder
from honestface_core.face.parsing import FaceParser

from .declare import field

FACEANALYSIS = "FACEANALYSIS,INSIGHTFACE,FACE_ANALYSIS"
"""insightface ``FaceAnalysis`` as cubiq's InstantID / PuLID loaders name it; inputs accept all three names."""
FACEXLIB_HELPER = "FACEXLIB_HELPER"
OPENCV_FACE = "HONESTFACE_OPENCV"
FACES = "HONESTFACE_FACES"
REFS = "HONESTFACE_REFS"
LIBRARY = "HONESTFACE_IDENTITY_LIBRARY"
LANDMARKS = "HONESTFACE_LANDMARKS"

INSIGHTFACE_TOOLTIP = ("An insightface FaceAnalysis (HonestFace insightface loader, or the InstantID / PuLID "
                       "loaders): SCRFD detector + ArcFace identity.")
FACEXLIB_TOOLTIP = "facexlib models (HonestFace facexlib loader): RetinaFace detector and/or face parser."
OPENCV_TOOLTIP = "OpenCV YuNet detector + SFace identity (HonestFace OpenCV loader): small, CPU only, permissive licences."

INSIGHTFACE_INPUT = field(FACEANALYSIS, INSIGHTFACE_TOOLTIP)
OPENCV_INPUT = field(OPENCV_FACE, OPENCV_TOOLTIP)
OPENCV_SFACE_INPUT = field(OPENCV_FACE, OPENCV_TOOLTIP + " Needs its SFace recognizer.")
COLOR_CORRECTIONS = ["none", "adain", "wavelet"]  # a list: ComfyUI checks list choices
MASK_INPUT = field(["auto", "parsing", "feathered"], "Blend mask: 'parsing' uses the facexlib parser, 'feathered' a "
                   "soft-edged square, 'auto' the parser when one is connected.")


@dataclass
class FacexlibModels:
    """What the facexlib loader outputs (``FACEXLIB_HELPER``): a RetinaFace detector and/or a face parser."""

    detector: RetinaFaceDetector | None
    parser: FaceParser | None


@dataclass
class OpenCVFaceModels:
    """What the OpenCV loader outputs: a YuNet detector and optionally an SFace encoder."""

    detector: YuNetDetector
    encoder: SFaceEncoder | None


def _connected(node: str, **sources) -> dict:
    given = {k: v for k, v in sources.items() if v is not None}
    if not given:
        raise HonestFaceError(f"{node}: model inputs", f"none of {', '.join(sources)} is connected",
                              "Connect one loader (HonestFace insightface, facexlib or OpenCV loader)")
    if len(given) > 1:
        raise HonestFaceError(f"{node}: model inputs", f"{' and '.join(given)} are both connected",
                              "Connect only one, so it is clear which model is used")
    return given


def pick_detector(node: str, insightface=None, facexlib=None, opencv: OpenCVFaceModels | None = None) -> FaceDetector:
    """The face detector of whichever single model input is connected."""
    kind, value = next(iter(_connected(node, insightface=insightface, facexlib=facexlib, opencv=opencv).items()))
    if kind == "insightface":
        return InsightFaceDetector(value)
    if kind == "opencv":
        return value.detector
    if getattr(value, "detector", None) is None:
        raise HonestFaceError(f"{node}: facexlib", "was loaded without a face detector",
                              "Choose a detector in the HonestFace facexlib loader")
    return value.detector


def pick_encoder(node: str, insightface=None, opencv: OpenCVFaceModels | None = None) -> IdentityEncoder:
    """The identity encoder of whichever single model input is connected (ArcFace or SFace)."""
    kind, value = next(iter(_connected(node, insightface=insightface, opencv=opencv).items()))
    if kind == "insightface":
        return ArcFaceEncoder(value)
    if value.encoder is None:
        raise HonestFaceError(f"{node}: opencv", "was loaded without the SFace recognizer",
                              "Choose a recognizer file in the HonestFace OpenCV loader")
    return value.encoder
