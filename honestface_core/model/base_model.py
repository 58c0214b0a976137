"""Load the SD-2.1-base UNet + VAE from local files only (no hub access, no text encoder).

Two layouts are accepted:

- a diffusers folder with ``unet/`` and ``vae/`` (each ``config.json`` + ``diffusion_pytorch_model.safetensors``
  or ``.bin``), e.g. ``models/diffusers/stable-diffusion-2-1-base``;
- a single-file checkpoint (``.safetensors``, or ``.ckpt``/``.pt``/``.pth`` read with ``weights_only=True``) in the
  original LDM key layout (``model.diffusion_model.*``, ``first_stage_model.*``), e.g.
  ``models/checkpoints/v2-1_512-ema-pruned.safetensors``. It is converted with diffusers' LDM conversion
  functions and the UNet/VAE configs shipped in ``model/configs`` (or the ones given), so no config is fetched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.files.model_paths import ModelFolders, model_folders
from honestface_core.files.weight_files import read_state_dict
from honestface_core.model.config import load_shipped_config

WHERE_TO_GET = "a local copy of SD-2.1-base: a diffusers folder with unet/ and vae/, or a single-file checkpoint in models/checkpoints"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def load_base_model(path: str | os.PathLike, unet_config: dict[str, Any] | None = None,
                    vae_config: dict[str, Any] | None = None) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """Load (UNet, VAE) in float32 on CPU from a diffusers folder or a single-file LDM checkpoint.

    ``unet_config`` / ``vae_config`` are used for single-file checkpoints (default: the shipped SD-2.1-base
    configs); a diffusers folder brings its own ``config.json`` files.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    if path.is_file():
        return _load_single_file(path, unet_config or load_shipped_config("unet"), vae_config or load_shipped_config("vae"))
    raise MissingModelError(path.name, path.parent, WHERE_TO_GET)


def _load_folder(path: Path) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    for sub in ("unet", "vae"):
        if not (path / sub / "config.json").is_file():
            raise MissingModelError(f"{sub}/config.json", path, WHERE_TO_GET)
        if not any((path / sub / name).is_file() for name in WEIGHT_NAMES):
            raise MissingModelError(f"{sub}/{WEIGHT_NAMES[0]}", path, WHERE_TO_GET)
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True, torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise HonestFaceError(f"base model folder '{path}'", f"could not be read as a diffusers UNet + VAE ({exc})",
                              "Point to an SD-2.1-base diffusers folder (unet/ and vae/) or a single-file checkpoint") from exc
    return unet, vae


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """State dict of a single-file checkpoint (safetensors, or torch pickle with ``weights_only=True``)."""
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise HonestFaceError(f"base checkpoint '{path}'", f"has an unknown extension '{path.suffix}'",
                              f"Use one of {', '.join(CHECKPOINT_SUFFIXES)}")
    return read_state_dict(path, "an SD-2.1-base single-file checkpoint")


def _load_single_file(path: Path, unet_config: dict[str, Any], vae_config: dict[str, Any]) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    state = read_checkpoint(path)
    if not any(k.startswith("model.diffusion_model.") for k in state) or not any(k.startswith("first_stage_model.") for k in state):
        raise HonestFaceError(f"base checkpoint '{path}'", "has no LDM UNet (model.diffusion_model.*) and VAE (first_stage_model.*) weights",
                              "Use an SD-2.1-base single-file checkpoint or a diffusers folder")
    unet = UNet2DConditionModel.from_config(unet_config)
    vae = AutoencoderKL.from_config(vae_config)
    for name, model, convert, cfg in (("UNet", unet, convert_ldm_unet_checkpoint, unet_config),
                                      ("VAE", vae, convert_ldm_vae_checkpoint, vae_config)):
        try:
            converted = convert(state, dict(cfg))
            model.load_state_dict(converted, strict=True)
        except (RuntimeError, KeyError, IndexError) as exc:
            raise HonestFaceError(f"base checkpoint '{path}'", f"does not match the SD-2.1-base {name} config ({str(exc)[:300]})",
                                  "Use an SD-2.1-base (512, cross-attention 1024) checkpoint") from exc
    return unet.float(), vae.float()


def find_base_model(models: str | os.PathLike | ModelFolders, name: str = "stable-diffusion-2-1-base") -> Path:
    """``diffusers/<name>`` (a folder) or ``checkpoints/<name>`` in ``models`` (a ``models/`` folder or a
    :class:`ModelFolders`), else SD-2.1-base's single-file checkpoint, else MissingModelError."""
    folders = model_folders(models)
    for kind in ("diffusers", "checkpoints"):
        for d in folders.dirs(kind):
            if (d / name).exists():
                return d / name
    if name == "stable-diffusion-2-1-base":
        for d in folders.dirs("checkpoints"):
            if (d / "v2-1_512-ema-pruned.safetensors").is_file():
                return d / "v2-1_512-ema-pruned.safetensors"
    raise MissingModelError(name, " or ".join(str(d) for d in folders.dirs("diffusers")), WHERE_TO_GET)
