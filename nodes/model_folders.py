"""Register the pack's model folders with ComfyUI's ``folder_paths``, merging with what is already there, and
hand them to the core loaders.

A user's ``extra_model_paths.yaml`` (or another node pack) may have registered the same folder names before this
pack loads; their paths are kept, in their order, and ours is only appended when missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from honestface_core.errors import MissingModelError
from honestface_core.files.model_paths import ModelFolders

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


def comfy_models() -> ModelFolders:
    """ComfyUI's registered folders (``models/<name>`` and any ``extra_model_paths.yaml`` entries) as the core's
    :class:`ModelFolders`: the core loaders search them in ComfyUI's order."""
    return ModelFolders(folder_paths.get_folder_paths)


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
