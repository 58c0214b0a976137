"""insightface model packs: load ``FaceAnalysis`` from local files only.

A pack lives in ``models/insightface/models/<name>/`` (ComfyUI's usual place, as used by InstantID / PuLID /
ReActor). :func:`load_face_analysis` checks the folder and its detector + recognizer files before insightface
sees them, so insightface never gets the chance to download anything, and returns insightface's own
``FaceAnalysis`` object (the ecosystem's ``FACEANALYSIS``). A pack unzipped one level too deep is found (with a
warning), and the onnxruntime providers each model really runs on are logged once per file.

Random-weight packs for tests: :mod:`honestface_core.testing.insightface_packs`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.files.model_paths import INSIGHTFACE_URL, MODEL_FILES, ModelFolders, model_folders
from honestface_core.files.onnx_sessions import log_session_providers, usable_providers

logger = logging.getLogger(__name__)

PACKS_FOLDER = "insightface/models"

#: pack name -> file names, derived from :data:`model_paths.MODEL_FILES` (detector first, recognizer second).
INSIGHTFACE_PACKS: dict[str, tuple[str, ...]] = {}
for _m in MODEL_FILES:
    if _m.folder.startswith(PACKS_FOLDER + "/"):
        _name = _m.folder[len(PACKS_FOLDER) + 1:]
        INSIGHTFACE_PACKS[_name] = INSIGHTFACE_PACKS.get(_name, ()) + (_m.filename,)
del _m, _name


def pack_folder(models_dir: str | os.PathLike | ModelFolders, name: str) -> Path:
    """``insightface/models/<name>`` in the first models folder that has it (the first folder when none has it)."""
    folders = model_folders(models_dir)
    return folders.find_dir(PACKS_FOLDER, name) or folders.dirs(PACKS_FOLDER)[0] / name


def _required_files(name: str) -> tuple[str, ...]:
    """Detector and recognizer file names of a known pack (empty for packs we do not know)."""
    files = INSIGHTFACE_PACKS.get(name, ())
    return files[:2]


def _has_pack_files(folder: Path, required: tuple[str, ...]) -> bool:
    return all((folder / f).is_file() for f in required) if required else any(folder.glob("*.onnx"))


_nested_reported: set[Path] = set()


def _check_pack(models_dir: str | os.PathLike | ModelFolders, name: str) -> Path:
    """The folder with pack ``name``'s files: ``pack_folder(models_dir, name)``, or a subfolder of it when the
    pack's zip was unpacked one level too deep (``antelopev2/antelopev2/*.onnx``, a common mistake; our choice:
    use it and warn once, since other node packs will not find it there)."""
    folder = pack_folder(models_dir, name)
    required = _required_files(name)
    if not folder.is_dir():
        raise MissingModelError(", ".join(required) or "<the pack's .onnx files>", folder, INSIGHTFACE_URL)
    candidates = [folder] + sorted(sub for sub in folder.iterdir() if sub.is_dir() and any(sub.glob("*.onnx")))
    complete = [c for c in candidates if _has_pack_files(c, required)]
    if complete and complete[0] != folder:
        if complete[0] not in _nested_reported:
            _nested_reported.add(complete[0])
            logger.warning("insightface pack '%s' was unpacked one level too deep: using the files in '%s'. Other "
                           "node packs (InstantID, PuLID, ReActor) look in '%s': move the .onnx files up there.",
                           name, complete[0], folder)
        return complete[0]
    if complete:
        return folder
    # name the missing file in the folder that holds part of the pack (the nested one if only it has .onnx files)
    where = next((c for c in candidates if any(c.glob("*.onnx"))), folder)
    for filename in required:
        if not (where / filename).is_file():
            raise MissingModelError(filename, where, INSIGHTFACE_URL)
    raise MissingModelError("<the pack's .onnx files>", folder, INSIGHTFACE_URL)


def load_face_analysis(
    models_dir: str | os.PathLike | ModelFolders,
    name: str = "antelopev2",
    providers: Sequence[str] = ("CPUExecutionProvider",),
    det_size: int = 640,
    allowed_modules: Sequence[str] | None = None,
):
    """Load insightface's ``FaceAnalysis`` from ``models_dir/insightface/models/<name>`` only (or from its
    subfolder when the pack was unpacked one level too deep, with a warning).

    Logs once per model file which onnxruntime providers each model really runs on.

    Args:
        models_dir: a ComfyUI-style ``models/`` folder or a :class:`ModelFolders`.
        name: pack folder name (``antelopev2``, ``buffalo_l`` or any other pack folder).
        providers: onnxruntime execution providers, in order of preference.
        det_size: square detector input size in pixels.
        allowed_modules: insightface task names to load (e.g. ``("detection", "recognition")``); all if None.

    Returns:
        a prepared ``insightface.app.FaceAnalysis``.

    Raises:
        MissingModelError: the folder, its detector or its recognizer file is missing (checked before
            insightface runs, so nothing is downloaded and no ``~/.insightface`` folder is created).
        HonestFaceError: the files exist but insightface cannot load them.
    """
    folder = _check_pack(models_dir, name).resolve()
    if int(det_size) < 32 or int(det_size) % 32:
        raise HonestFaceError("det_size", f"{det_size} is not a positive multiple of 32", "Use e.g. 640")
    usable = usable_providers(providers)  # also: a clear error when no onnxruntime build is installed
    try:
        from insightface.app import FaceAnalysis
    except ImportError as err:
        raise HonestFaceError("insightface", f"cannot be imported ({err})",
                              "Install it into the Python that runs ComfyUI: `pip install insightface`") from err
    # insightface 2.x loads `name` directly when it is a folder; 0.7.3 joins root/models/name, which for an
    # absolute `name` is that same folder (os.path.join drops everything before an absolute component).
    try:
        app = FaceAnalysis(name=str(folder), root=str(pack_folder(models_dir, name).resolve().parents[1]),
                           allowed_modules=list(allowed_modules) if allowed_modules is not None else None,
                           providers=usable)
    except AssertionError as err:
        raise HonestFaceError(f"insightface pack '{folder}'", "contains no face detector model that insightface recognises",
                              f"Put the pack's detector .onnx file (e.g. {INSIGHTFACE_PACKS['antelopev2'][0]}) in it") from err
    except Exception as err:  # onnx/onnxruntime raise many types for unreadable files
        raise HonestFaceError(f"insightface pack '{folder}'", f"insightface could not load it ({err})",
                              "Replace the damaged .onnx file(s) with a fresh copy of the pack") from err
    if allowed_modules is None or "recognition" in allowed_modules:
        if "recognition" not in app.models:
            raise HonestFaceError(f"insightface pack '{folder}'", "contains no recognition (ArcFace) model",
                                  "Use a complete pack such as antelopev2 or buffalo_l")
    ctx_id = 0 if usable[0] != "CPUExecutionProvider" else -1
    app.prepare(ctx_id=ctx_id, det_size=(int(det_size), int(det_size)))
    for model in app.models.values():  # after prepare(), which may move a model's session to CPU
        if getattr(model, "session", None) is not None:
            log_session_providers(model.model_file, model.session, usable)
    return app
