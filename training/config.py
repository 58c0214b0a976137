"""Training configuration: nested dataclasses read from a YAML file (every field has a default).

Unknown keys are rejected with a clear error, so a typo in a config never silently trains the wrong thing.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from honestface_core.errors import HonestFaceError
from training.degradation import DegradationConfig


@dataclass
class DatasetSpec:
    """One training source. ``kind``: ``identity`` (root/<identity>/<image>, with references) or ``single``
    (FFHQ-style flat folder, references always dropped). ``aligned``: images are already FFHQ-aligned crops
    (only resized); otherwise faces are detected and aligned with the core pipeline."""

    root: str = ""
    kind: str = "identity"
    aligned: bool = False


@dataclass
class DataConfig:
    datasets: list[DatasetSpec] = field(default_factory=list)
    resolution: int = 512  # training crop size (the FFHQ template scaled to this size)
    cache_dir: str = ""  # aligned-crop cache; default: <output>/cache
    refs_min: int = 1
    refs_max: int = 4
    ref_dropout: float = 0.2  # probability of a blind sample (no references): one model serves both modes
    near_duplicate_threshold: float = 2.0  # mean abs difference (0..255) of 16x16 grey thumbnails; below = duplicate
    detector: str = "yunet"  # detector backend of honestface_core.face.detection used for alignment
    detector_path: str = ""  # model file of that detector ("" = the default location)
    models_dir: str = ""  # ComfyUI-style models/ folder for detector/parser/backbone files
    num_workers: int = 0
    # our choice, for overfit checks (CI): each crop keeps one degradation and reference draw in every epoch,
    # so the training set is a fixed set of pairs; False = a fresh draw per sample position (real training)
    fixed_pairs: bool = False


@dataclass
class ModelConfig:
    """Which HonestFace model to train. ``variant``: a named config of honestface_core.model.config
    (``tiny`` or ``sd21``); ``overrides``: field overrides; ``base``: SD-2.1-base diffusers folder or
    single-file checkpoint (``tiny`` variant: a random-weight tiny base is built in memory)."""

    variant: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    base: str = ""
    vre_checkpoint: str = ""  # stage-1 output (our safetensors) or OSDFace associate_2.ckpt
    init_bundle: str = ""  # start from an exported bundle
    # warm start: folder with OSDFace's associate_2.ckpt, pytorch_lora_weights.safetensors and
    # embedding_change_weights.pth; VRE, projector and LoRA start from them (docs/training.md)
    osdface_init: str = ""
    tiny_vae_steps: int = 0  # tiny variant without a base: fit the tiny VAE on the crops first (training/tiny_base.py)


@dataclass
class LossConfig:
    mse: float = 1.0
    perceptual: float = 1.0
    # edge_dists (OSDFace's edge-aware DISTS) | lpips | edge (Sobel L1 fallback) | auto (the first whose files exist,
    # in that order); see training.losses.build_perceptual and docs/training.md
    perceptual_kind: str = "auto"
    vgg16: str = ""  # torchvision's vgg16-397923af.pth for DISTS/LPIPS ("" = <data.models_dir>/torchvision, torch hub cache)
    dists_weights: str = ""  # DISTS's weights.pt ("" = <data.models_dir>/dists, an installed DISTS_pytorch)
    lpips_lin: str = ""  # LPIPS v0.1 linear layers ("" = weights/v0.1/vgg.pth of an installed lpips)
    identity: float = 0.5
    mfa: float = 0.5
    gan: float = 0.05
    gan_type: str = "hinge"  # hinge | ns (non-saturating)
    face_backbone: str = ""  # insightface IResNet ONNX/pth for L_ID, L_MFA features ("" = random tiny backbone in tests only)
    parser: str = ""  # parsenet | bisenet (facexlib files in data.models_dir) for the L_MFA mask; "" = feathered ellipse


@dataclass
class DiscriminatorConfig:
    channels: int = 64
    depth: int = 3
    noise_t: tuple[int, int] = (0, 250)  # our choice: latents are noised at a random t in this range (diffusion-GAN style)
    lr: float = 1e-5
    r1: float = 0.0  # optional R1 penalty weight on real latents


@dataclass
class OptimConfig:
    """AdamW of the generator. ``lr`` drives the prompt modules (projector, embedders, fusion); ``lora_lr`` > 0
    gives the UNet LoRA its own rate (our choice; 0 = ``lr``). Adam moves every weight by about the rate per step,
    so a 1024-wide layer's output moves by about rate x 1024: the wide prompt modules need a small rate, while a
    fresh LoRA may need a larger one (the tiny CPU config, see docs/training.md)."""

    lr: float = 5e-5
    lora_lr: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-2
    warmup_steps: int = 0
    grad_clip: float = 1.0


@dataclass
class TrainLoopConfig:
    max_steps: int = 100000
    batch_size: int = 1  # per device
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    val_every: int = 1000
    val_samples: int = 4
    ema_decay: float = 0.0  # 0 = no EMA
    d_start_step: int = 0  # discriminator/L_G switched on from this step


@dataclass
class Stage1Config:
    """Stage 1 (VRE dictionaries, ``training/stage1.py``): steps of each phase and their optimiser."""

    hq_steps: int = 20000
    lq_steps: int = 20000
    associate_steps: int = 10000
    batch_size: int = 4
    lr: float = 1e-4
    temperature: float = 0.1


@dataclass
class TrainConfig:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)


def _build(cls, value: Any, where: str):
    if dataclasses.is_dataclass(cls):
        if not isinstance(value, dict):
            raise HonestFaceError(f"config section '{where}'", f"expected a mapping, got {type(value).__name__}", "Fix the YAML file")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise HonestFaceError(f"config section '{where}'", f"unknown keys {unknown}", f"Valid keys: {sorted(names)}")
        return cls(**{k: _build(hints[k], v, f"{where}.{k}" if where else k) for k, v in value.items()})
    origin = typing.get_origin(cls)
    if origin is list:
        (item,) = typing.get_args(cls)
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value or [])]
    if origin is tuple:
        return tuple(value)
    return value


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig`, rejecting unknown keys."""
    return _build(TrainConfig, raw or {}, "")


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML training config."""
    path = Path(path)
    if not path.is_file():
        raise HonestFaceError(f"config '{path}'", "file not found", "Pass --config training/configs/<name>.yaml")
    return config_from_dict(yaml.safe_load(path.read_text()) or {})


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain dict (tuples as lists) for YAML/JSON."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))
