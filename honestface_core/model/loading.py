"""The one model loader: a HonestFace bundle (or OSDFace's blind weights) on the SD-2.1-base UNet + VAE, with the
frozen ArcFace backbone, from a ``models/`` directory or ComfyUI's registered folders (``ModelFolders``).
The CLI, the nodes, the bench and training load through here."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from honestface_core.devices import resolve_device, resolve_dtype
from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.files.model_paths import MODEL_FILES, ModelFolders, model_folders
from honestface_core.model.iresnet import FaceBackbone

logger = logging.getLogger(__name__)

OSDFACE = "osdface"
"""``bundle`` name that loads OSDFace's blind weights from ``models/honestface/osdface``."""


def find_backbone_file(models: str | os.PathLike | ModelFolders, name: str) -> Path:
    """``<name>.onnx`` in an insightface pack folder (``insightface/models/<pack>/``): the pack the model file
    table names first, then any other pack folder."""
    folders = model_folders(models)
    filename = f"{name}.onnx"
    known = [m.folder for m in MODEL_FILES if m.filename == filename]
    for folder in known:
        for d in folders.dirs(folder):
            if (d / filename).is_file():
                return d / filename
    for packs in folders.dirs("insightface/models"):
        for path in sorted(packs.glob(f"*/{filename}")) if packs.is_dir() else []:
            return path
    return folders.find(known[0] if known else "insightface/models/buffalo_l", filename)


def load_face_backbone(path: str | os.PathLike, channels: int) -> FaceBackbone:
    """The ArcFace IResNet of an insightface recogniser ONNX file, its feature stage the one with ``channels``."""
    from honestface_core.model.onnx_import import load_iresnet_from_onnx

    path = Path(path)
    if not path.is_file():
        raise MissingModelError(path.name, path.parent, "insightface buffalo_l/antelopev2 recogniser (w600k_r50.onnx / glintr100.onnx)")
    net = load_iresnet_from_onnx(path)
    if channels not in net.widths:
        raise HonestFaceError(f"face backbone '{path}'", f"has stage widths {net.widths}, the model needs {channels}-channel "
                              "features", "Use the recogniser the model was trained with, or (training) set "
                              "model.overrides.features.backbone_channels to one of these widths")
    return FaceBackbone(net, feature_stage=net.widths.index(channels) + 1)


def attach_backbone(model, onnx_path: str | os.PathLike) -> None:
    """Load the model's recogniser (:func:`load_face_backbone`) and attach it on the model's device and dtype."""
    backbone = load_face_backbone(onnx_path, int(model.config.features.backbone_channels))
    model.set_backbone(backbone.to(model.device, model.dtype))


def load_restorer(models: str | os.PathLike | ModelFolders, device: str | torch.device = "auto",
                  dtype: str | torch.dtype = "auto", bundle: str = "honestface.safetensors",
                  base: str | os.PathLike | None = None, merge_lora: bool = True, compile_modules: bool = False):
    """Load a restorer.

    Args:
        models: a ComfyUI-style ``models/`` folder or a :class:`ModelFolders`.
        bundle: file name in ``models/honestface/``, or ``"osdface"`` for OSDFace's blind weights in
            ``models/honestface/osdface/``.
        base: SD-2.1-base diffusers folder or single-file checkpoint (default: found under ``models``).
        merge_lora: add the LoRA into the UNet weights (faster; our choice for inference).
        compile_modules: ``torch.compile`` the UNet and VAE (off by default: each new batch size compiles first,
            see docs/restore.md).

    The face backbone (``<config.features.backbone>.onnx`` from an insightface pack) is attached when found;
    without it the model restores blind only (a warning is logged).
    """
    from honestface_core.model.base_model import find_base_model

    folders = model_folders(models)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    base_path = Path(base) if base is not None else find_base_model(folders)
    if bundle == OSDFACE:
        from honestface_core.model.osdface import load_osdface

        names = [m.filename for m in MODEL_FILES if m.folder == f"honestface/{OSDFACE}"]
        folder = folders.find_dir("honestface", OSDFACE, names) or folders.dirs("honestface")[0] / OSDFACE
        model = load_osdface(folder, base_path, device, dtype, merge_lora=merge_lora)
    else:
        from honestface_core.model.bundle import load_honestface

        model = load_honestface(folders.find("honestface", bundle), base_path, device, dtype, merge_lora=merge_lora)
        if model.config.variant != OSDFACE:
            try:
                attach_backbone(model, find_backbone_file(folders, model.config.features.backbone))
            except MissingModelError as err:
                logger.warning("%s; restoring with references needs it (blind restoration works)", err)
    if compile_modules:
        model.generator.compile_modules()
    return model
