"""Build the HonestFace model for training and run the training forward pass.

- :func:`model_config_for`: ``HonestFaceConfig`` from ``model.variant`` (``tiny`` / ``sd21``) + ``model.overrides``.
- :func:`build_model`: base UNet/VAE (a local diffusers folder; for ``tiny`` without a base a tiny base is written
  once to ``<output>/base`` and loaded from there like a real one), face backbone (insightface
  ArcFace ONNX; random-weight file for ``tiny``), optional stage-1 VRE, fresh LoRA, optional init bundle, or the
  warm start from OSDFace's three files (:func:`warm_start_config`, :func:`load_osdface_weights`).
- :class:`TrainingForward`: one module whose ``forward`` returns everything the losses and the discriminator
  need, so DDP/FSDP wrap a single call.
- :func:`face_region_mask`: the L_MFA mask (face parser, or a feathered ellipse when none is configured).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.model.config import HonestFaceConfig
from honestface_core.model.honestface import HonestFaceModel
from honestface_core.model.loading import load_face_backbone
from honestface_core.model.osdface import LORA_FILE, OSDFaceFiles, read_osdface_files
from training.config import TrainConfig


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def model_config_for(cfg: TrainConfig) -> HonestFaceConfig:
    """HonestFaceConfig from ``model.variant`` (``tiny`` or ``sd21``) and ``model.overrides`` (nested dict)."""
    if cfg.model.variant not in ("tiny", "sd21"):
        raise HonestFaceError("config 'model.variant'", f"unknown variant {cfg.model.variant!r}", "Use 'tiny' or 'sd21'")
    base = HonestFaceConfig.tiny() if cfg.model.variant == "tiny" else HonestFaceConfig()
    return HonestFaceConfig.from_dict(_deep_merge(base.to_dict(), cfg.model.overrides))


def warm_start_config(mcfg: HonestFaceConfig, files: OSDFaceFiles) -> HonestFaceConfig:
    """``mcfg`` with the sizes OSDFace's files fix: the VRE and projector widths, the LoRA rank and alpha = rank
    (scale 1, as :func:`~honestface_core.model.osdface.load_osdface` runs the file). Everything else stays the
    config's: identity branches, fusion, LoRA targets and ``vre.input_norm``."""
    where = f"OSDFace files in '{files.folder}' (model.osdface_init)"
    if files.prompt_dim != mcfg.prompt_dim:
        raise HonestFaceError(where, f"make {files.prompt_dim}-wide prompt tokens, the model's prompt is {mcfg.prompt_dim} wide",
                              "Use OSDFace's files with the SD-2.1-base model (prompt width 1024)")
    vre = dataclasses.replace(files.vre_config(), input_norm=mcfg.vre.input_norm)
    try:
        return dataclasses.replace(mcfg, vre=vre, lora=dataclasses.replace(mcfg.lora, rank=files.rank, alpha=float(files.rank)))
    except ValueError as exc:
        raise HonestFaceError(where, f"do not describe a usable model ({str(exc)[:200]})",
                              "Use OSDFace's released files") from exc


def load_osdface_weights(model: HonestFaceModel, files: OSDFaceFiles) -> None:
    """Copy OSDFace's VRE, projector and LoRA matrices into ``model`` (built from :func:`warm_start_config`, LoRA
    injected). LoRA layers the file has no matrices for keep B = 0, so they change nothing before training."""
    where = f"OSDFace files in '{files.folder}' (model.osdface_init)"
    try:
        model.vre.load_state_dict(files.vre, strict=True)
        model.projector.load_state_dict(files.projector, strict=True)
    except RuntimeError as exc:
        raise HonestFaceError(where, f"do not fit the model ({str(exc)[:300]})", "Use OSDFace's released files") from exc
    from honestface_core.model.lora import ADAPTER

    params = dict(model.generator.unet.named_parameters())
    targets = {}
    for key, value in files.lora.items():  # <module>.lora_A.weight -> <module>.lora_A.<adapter>.weight
        name = key[: -len(".weight")] + f".{ADAPTER}.weight"
        if name not in params:
            raise HonestFaceError(f"OSDFace LoRA '{files.folder / LORA_FILE}'",
                                  f"has matrices for '{key.rsplit('.', 2)[0]}', a layer model.lora.target_modules does not cover",
                                  "Add that layer's name to model.overrides.lora.target_modules")
        if params[name].shape != value.shape:
            raise HonestFaceError(f"OSDFace LoRA '{files.folder / LORA_FILE}'",
                                  f"has '{key}' of shape {tuple(value.shape)}, the model's is {tuple(params[name].shape)}",
                                  "Use OSDFace's file with the SD-2.1-base model it was trained on")
        targets[name] = value
    with torch.no_grad():
        for name, value in targets.items():
            params[name].copy_(value)


def build_model(cfg: TrainConfig, workdir: str | Path, dataset=None) -> HonestFaceModel:
    """The model to train (frozen parts frozen by the model itself), on CPU, in float32.

    ``workdir`` receives the tiny base (see :mod:`training.tiny_base`, its VAE fitted on ``dataset``) and a
    random-weight backbone when the tiny variant has no ``model.base`` / ``losses.face_backbone``.
    """
    from safetensors.torch import load_file

    mcfg = model_config_for(cfg)
    osdface = None
    if cfg.model.osdface_init:  # read (and check) before any slow work
        if cfg.model.vre_checkpoint or cfg.model.init_bundle:
            raise HonestFaceError("config 'model.osdface_init'", "is set together with model.vre_checkpoint or model.init_bundle",
                                  "The warm start takes VRE, projector and LoRA from OSDFace's files: leave the other two empty")
        osdface = read_osdface_files(cfg.model.osdface_init)
        mcfg = warm_start_config(mcfg, osdface)
    workdir = Path(workdir)
    base = cfg.model.base
    backbone_path = cfg.losses.face_backbone
    if cfg.model.variant == "tiny" and not base:
        from training.tiny_base import write_tiny_base

        base = write_tiny_base(workdir / "base", mcfg, dataset, cfg.model.tiny_vae_steps if dataset is not None else 0, cfg.seed)
    if cfg.model.variant == "tiny" and not backbone_path:
        from honestface_core.testing.arcface_onnx import write_arcface_onnx

        backbone_path = workdir / "base" / "arcface_random.onnx"
        if not backbone_path.is_file():
            write_arcface_onnx(backbone_path, layers=(1, 1, 1, 1), width=max(1, mcfg.features.backbone_channels // 8),
                               seed=cfg.seed)
    if not base:
        raise HonestFaceError("config 'model.base'", "is empty", "Point it to a local SD-2.1-base diffusers folder")
    if not backbone_path:
        raise HonestFaceError("config 'losses.face_backbone'", "is empty",
                              "Point it to an insightface recogniser ONNX (models/insightface/models/buffalo_l/w600k_r50.onnx)")
    from honestface_core.model.base_model import load_base_model

    unet, vae = load_base_model(base, mcfg.generator.unet, mcfg.generator.vae)
    model = HonestFaceModel(mcfg, unet=unet, vae=vae, backbone=load_face_backbone(backbone_path, mcfg.features.backbone_channels))
    if cfg.model.vre_checkpoint:
        vre = Path(cfg.model.vre_checkpoint)
        if not vre.is_file():
            raise MissingModelError(vre.name, vre.parent, "stage-1 output (training/stage1.py) or OSDFace's associate_2.ckpt")
        if vre.suffix == ".safetensors":
            model.vre.load_state_dict(load_file(str(vre)))
        else:
            from honestface_core.model.osdface import read_vre_checkpoint

            model.vre.load_state_dict(read_vre_checkpoint(vre))
    if cfg.model.init_bundle:  # continue from an exported bundle (its modules and LoRA)
        from honestface_core.model import lora as lora_utils
        from honestface_core.model.bundle import LORA_PREFIX, read_bundle

        _, tensors = read_bundle(cfg.model.init_bundle)
        model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(LORA_PREFIX)}, strict=False)
        lora_utils.load_lora_state_dict(model.generator.unet, {k[len(LORA_PREFIX):]: v for k, v in tensors.items()
                                                               if k.startswith(LORA_PREFIX)}, mcfg.lora.alpha)
        model.freeze_base()
    else:
        model.add_lora()
        if osdface is not None:
            load_osdface_weights(model, osdface)
    model.base_paths = {"base": str(base), "backbone": str(backbone_path)}
    return model


class TrainingForward(nn.Module):
    """``forward(lq, refs, ref_mask, hq) -> (restored (unclamped), z_hat_H, p, z_H)`` of a :class:`HonestFaceModel`."""

    def __init__(self, model: HonestFaceModel):
        super().__init__()
        self.model = model

    def forward(self, lq: torch.Tensor, refs: torch.Tensor, ref_mask: torch.Tensor, hq: torch.Tensor):
        m = self.model
        prompt, keep = m.encode_prompt_masked(lq, (refs, ref_mask) if ref_mask.shape[1] else None)
        with torch.no_grad():
            z_lq = m.generator.encode(lq)
            z_hq = m.generator.encode(hq)
        z_hat = m.restore_latent(z_lq, prompt, keep)
        return m.generator.decode(z_hat, clamp=False), z_hat, prompt, z_hq


def ellipse_mask(size: int, n: int, device: torch.device | str = "cpu", feather: float = 0.04) -> torch.Tensor:
    """Fallback L_MFA mask (our choice): an ellipse over the inner face of the FFHQ template (centre (0.5, 0.56),
    semi-axes (0.29, 0.36) of the crop side), Gaussian-feathered with sigma ``feather * size``; (n, 1, S, S)."""
    from honestface_core.face.parsing import gaussian_blur

    t = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(t, t, indexing="ij")
    hard = (((x - 0.5) / 0.29) ** 2 + ((y - 0.56) / 0.36) ** 2 <= 1).float()[None, None]
    return gaussian_blur(hard, feather * size).clamp(0, 1).expand(n, 1, size, size)


def load_face_parser(kind: str, models_dir: str | Path):
    """facexlib ParseNet/BiSeNet from ``models_dir/facexlib`` (see ``honestface_core.face.parsing``)."""
    from honestface_core.face.parsing import FaceParser

    return FaceParser.from_models_dir(models_dir, kind)


@torch.no_grad()
def face_region_mask(hq: torch.Tensor, parser=None) -> torch.Tensor:
    """(B, 1, S, S) soft mask of skin, brows, eyes, nose and lips of ``hq`` ([-1, 1]); ellipse if no parser."""
    if parser is None:
        return ellipse_mask(hq.shape[-1], hq.shape[0], hq.device).to(hq.dtype)
    from honestface_core.face.parsing import FACE_REGION_LABELS, region_mask

    labels = parser.parse(((hq.float() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1))
    return region_mask(labels, FACE_REGION_LABELS, feather=0.02, margin=0.02)[:, None].to(hq.dtype)
