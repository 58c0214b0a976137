"""Register the pack's model folders with ComfyUI's ``folder_paths``, merging with what is already there, and
find files in them.

A user's ``extra_model_paths.yaml`` (or another node pack) may have registered the same folder names before this
pack loads; their paths are kept, in their order, and ours is only appended when missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from honestface_core.errors import HonestFaceError, MissingModelError

# folder name -> file extensions the pack reads from it (relative to ComfyUI's models/ folder).
MODEL_FOLDERS: dict[str, frozenset[str]] = {
    "insightface": frozenset({".onnx"}),  # insightface/models/<pack name>/*.onnx, as cubiq's InstantID/PuLID
    "facexlib": frozenset({".pth"}),
    "facedetection": frozenset({".onnx"}),  # OpenCV YuNet / SFace
    "landmarks": frozenset({".dat"}),  # dlib 68-point shape predictor (landmark metrics)
    "honestface": frozenset({".safetensors", ".ckpt", ".pth"}),
    "iqa": frozenset({".pth", ".pt", ".safetensors"}),  # MUSIQ / CLIP-IQA / MANIQA weights, pyiqa's file names
}


def register_model_folders() -> None:
    """Add ``models/<name>`` and the extensions above to every folder of :data:`MODEL_FOLDERS`.

    Existing paths (from extra_model_paths.yaml or other packs) stay first; existing extensions are kept and
    ours are added. Nothing is removed or replaced.
    """
    for name, extensions in MODEL_FOLDERS.items():
        default = os.path.join(folder_paths.models_dir, name)
        if name in folder_paths.folder_names_and_paths:
            paths, existing = folder_paths.folder_names_and_paths[name]
            if default not in paths:
                paths.append(default)
            folder_paths.folder_names_and_paths[name] = (paths, set(existing) | extensions)
        else:
            folder_paths.folder_names_and_paths[name] = ([default], set(extensions))


def models_dir_with(folder: str, relative: str) -> Path:
    """A ComfyUI-style ``models/`` folder for ``honestface_core`` loaders, chosen so that
    ``<models_dir>/<folder>/<relative>`` exists among the registered paths of ``folder``; ComfyUI's own
    ``models/`` if none has it (the core loader then names the missing file and the folder it belongs in).

    The core loaders address files as ``models_dir/<folder>/...``; a registered path whose last component is not
    ``folder`` (e.g. ``/data/faces`` added for ``facexlib`` in extra_model_paths.yaml) cannot be expressed that
    way and is reported instead of silently ignored.
    """
    for p in folder_paths.get_folder_paths(folder):
        if (Path(p) / relative).exists():
            if Path(p).name == folder:
                return Path(p).parent
            raise HonestFaceError(f"model '{relative}'", f"is in '{p}', but the pack reads {folder} files only from "
                                  f"folders named '{folder}'", f"Move it to '{Path(folder_paths.models_dir) / folder}' "
                                  f"or register a folder named '{folder}' in extra_model_paths.yaml")
    return Path(folder_paths.models_dir)


def check_choices(*checks: tuple[str, str, list[str], str, str, str]) -> bool | str:
    """For a loader's ``VALIDATE_INPUTS``: True when every value is among the files found, else the message ComfyUI
    shows when the prompt is queued (before anything runs), naming each input whose file is missing, the file, the
    folder it belongs in and where to get it. Loader menus list only what exists, so a workflow saved elsewhere can
    name a file this ComfyUI does not have. ComfyUI shows the message once per checked input.

    Args:
        checks: ``(input name, value, choices, file name, folder under models/, where to get it)`` each.
    """
    missing = [f"{name}: {MissingModelError(filename, Path(folder_paths.models_dir) / folder, where)}"
               for name, value, choices, filename, folder, where in checks if value not in choices]
    return " | ".join(missing) if missing else True
