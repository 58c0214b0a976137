"""Plain dataclass configs of the HonestFace model (JSON round trip through ``to_dict`` / ``from_dict``).

Values fixed by the papers (OSDFace VRE, SD-2.1-base, LoRA rank/alpha 16, t = 399) are the defaults. Every other
value is **our choice** (the HonestFace method text is not public) and is marked so in the field comments.
``HonestFaceConfig.tiny()`` gives the same structure with tiny widths so tests run a 512x512 forward on CPU in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
VARIANTS = ("honestface", "osdface")


def load_shipped_config(name: str) -> dict[str, Any]:
    """Read one of the JSON configs shipped in ``model/configs`` (``unet``, ``vae`` or ``scheduler``)."""
    return json.loads((CONFIG_DIR / f"{name}_sd21_base.json").read_text())


@dataclass
class VREConfig:
    """OSDFace's visual representation embedder (VQGAN-style encoder + frozen LQ codebook + projector)."""

    in_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 2, 2, 2, 4, 8)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    resolution: int = 512
    z_channels: int = 512
    codebook_size: int = 1024
    codebook_dim: int = 512
    num_tokens: int = 77
    projector_hidden: int = 256
    norm_groups: int = 32
    head_size: int = 1
    # what the VRE sees: "single" = the image in [-1, 1]; "double" = OSDFace's (x - 0.5) / 0.5 of that image (what
    # OSDFace's projector and LoRA were trained on); "auto" = double for variant "osdface", else single (our choice)
    input_norm: str = "auto"


@dataclass
class IdentityEncoderConfig:
    """Face Identity Encoder (ArcFace embeddings of the references -> p_F). Everything here is our choice."""

    embedding_dim: int = 512
    num_tokens: int = 4
    pooling: str = "attention"  # "attention" (learned query, order-invariant) or "mean"
    pooling_heads: int = 8
    hidden_dim: int = 1024


@dataclass
class FeatureExtractorConfig:
    """Facial Feature Extractor (frozen face-recognition backbone features -> p_I). Everything here is our choice."""

    num_tokens: int = 16
    backbone: str = "w600k_r50"  # insightface recogniser whose IResNet weights are loaded (or "glintr100")
    backbone_channels: int = 512  # channels of the backbone's feature map (IResNet stage 4)
    feature_grid: int = 7  # side of the backbone's feature map (112 input, stage 4 -> 7x7)
    dim: int = 512
    depth: int = 2
    heads: int = 8
    ff_mult: int = 2


@dataclass
class FusionConfig:
    """Feature Fusion of p_L, p_F, p_I into p. Everything here is our choice."""

    mixer_layers: int = 0  # 0 = concatenation only; n > 0 adds a zero-initialised transformer mixer
    mixer_heads: int = 8
    mixer_ff_mult: int = 2
    # "normed": p_L gets its LayerNorm + branch-type embedding like the other branches; "raw": p_L enters the prompt
    # exactly as the projector made it (the warm start from OSDFace, docs/training.md)
    lq_tokens: str = "normed"
    # "null": learned null tokens stand in for p_F / p_I of a face without references; "masked": those tokens are
    # left out of the mixer and of the UNet's cross-attention (dropped when no face of the batch has references)
    absent_tokens: str = "null"


@dataclass
class LoRAConfig:
    """LoRA on the SD-2.1 UNet: rank 16, alpha 16 (the ``--lora_rank`` / ``--lora_alpha`` defaults of OSDFace's
    ``infer.py``, github.com/jkwang28/OSDFace)."""

    rank: int = 16
    alpha: float = 16.0
    # our choice: OSEDiff's target list (osediff.py, initialize_unet's l_grep; github.com/cswry/OSEDiff @ fcc4f09),
    # conv and attention layers; OSDFace's training code is not released, so its own list is not known
    target_modules: tuple[str, ...] = (
        "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
        "conv1", "conv2", "conv_shortcut", "conv", "conv_in", "conv_out",
    )


@dataclass
class GeneratorConfig:
    """SD-2.1-base UNet + VAE hyper-parameters and the fixed one-step timestep."""

    timestep: int = 399
    unet: dict[str, Any] = field(default_factory=lambda: load_shipped_config("unet"))
    vae: dict[str, Any] = field(default_factory=lambda: load_shipped_config("vae"))
    scheduler: dict[str, Any] = field(default_factory=lambda: load_shipped_config("scheduler"))


@dataclass
class HonestFaceConfig:
    """The whole model. ``variant="osdface"`` runs OSDFace's blind model (prompt = p_L only)."""

    variant: str = "honestface"
    image_size: int = 512  # side of the aligned crops the model restores (SD-2.1-base: 512)
    prompt_dim: int = 1024
    vre: VREConfig = field(default_factory=VREConfig)
    identity: IdentityEncoderConfig = field(default_factory=IdentityEncoderConfig)
    features: FeatureExtractorConfig = field(default_factory=FeatureExtractorConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)

    def __post_init__(self) -> None:
        validate_config(self)

    @property
    def num_prompt_tokens(self) -> int:
        """77 for OSDFace; 77 + N_F + N_I for HonestFace."""
        if self.variant == "osdface":
            return self.vre.num_tokens
        return self.vre.num_tokens + self.identity.num_tokens + self.features.num_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HonestFaceConfig":
        return _from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> "HonestFaceConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def tiny(cls, variant: str = "honestface") -> "HonestFaceConfig":
        """SD-2.1 structure (4 UNet/VAE levels, 2 layers per block, cross-attention 1024) with tiny widths.

        The tiny VRE reads a 256 input with one level less, keeping the 16x16 token grid (256 positions).
        """
        unet = load_shipped_config("unet")
        unet.update(block_out_channels=[8, 16, 16, 16], attention_head_dim=[2, 2, 2, 2], norm_num_groups=4)
        vae = load_shipped_config("vae")
        vae.update(block_out_channels=[4, 4, 8, 8], norm_num_groups=4)
        return cls(
            variant=variant,
            vre=VREConfig(base_channels=4, channel_mult=(1, 2, 2, 4, 8), resolution=256, z_channels=32, codebook_size=128, codebook_dim=32, projector_hidden=16,
                          norm_groups=4),
            identity=IdentityEncoderConfig(embedding_dim=512, num_tokens=4, pooling_heads=4, hidden_dim=64),
            features=FeatureExtractorConfig(num_tokens=16, backbone_channels=64, dim=32, depth=1, heads=4, ff_mult=2),
            fusion=FusionConfig(mixer_layers=1, mixer_heads=4, mixer_ff_mult=1),
            lora=LoRAConfig(rank=4, alpha=8.0),
            generator=GeneratorConfig(unet=unet, vae=vae),
        )


def _from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build a (nested) dataclass from a dict; lists become tuples where the field is a tuple; unknown keys fail."""
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", data, f"is of type {type(data).__name__}, not a JSON object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(map(str, unknown))[:5]}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value, f"{prefix}{name}.")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# Validation. Bounds are our choice: generous for real models (SD-2.1 HonestFace: widths <= 1280, codebook 1024,
# 97 prompt tokens, 1.0e9 parameters), small enough that a crafted config cannot ask for unbounded memory.
# docs/model.md lists them.

MAX_WIDTH = 8192  # channels, embedding / hidden / prompt widths, norm groups
MAX_CODEBOOK = 65536  # codebook entries
MAX_TOKENS = 4096  # tokens of one branch and of the whole prompt
MAX_DEPTH = 64  # layers, blocks, multipliers
MAX_HEADS = 256
MAX_SIDE = 4096  # image and feature-map sides
MAX_IMAGE_CHANNELS = 64  # image / latent channels
MAX_RANK = 1024  # LoRA rank
MAX_LIST = 16  # entries of a per-level list (channel multipliers, UNet/VAE levels)
MAX_TRAIN_TIMESTEPS = 100_000

_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "image_size": (8, MAX_SIDE), "prompt_dim": (1, MAX_WIDTH),
    "vre.in_channels": (1, MAX_IMAGE_CHANNELS), "vre.base_channels": (1, MAX_WIDTH), "vre.channel_mult": (1, MAX_DEPTH),
    "vre.num_res_blocks": (1, MAX_DEPTH), "vre.attn_resolutions": (1, MAX_SIDE), "vre.resolution": (8, MAX_SIDE),
    "vre.z_channels": (1, MAX_WIDTH), "vre.codebook_size": (1, MAX_CODEBOOK), "vre.codebook_dim": (1, MAX_WIDTH),
    "vre.num_tokens": (1, MAX_TOKENS), "vre.projector_hidden": (1, MAX_WIDTH), "vre.norm_groups": (1, MAX_WIDTH),
    "vre.head_size": (1, MAX_HEADS),
    "identity.embedding_dim": (1, MAX_WIDTH), "identity.num_tokens": (1, MAX_TOKENS),
    "identity.pooling_heads": (1, MAX_HEADS), "identity.hidden_dim": (1, MAX_WIDTH),
    "features.num_tokens": (1, MAX_TOKENS), "features.backbone_channels": (1, MAX_WIDTH),
    "features.feature_grid": (1, MAX_SIDE), "features.dim": (1, MAX_WIDTH), "features.depth": (1, MAX_DEPTH),
    "features.heads": (1, MAX_HEADS), "features.ff_mult": (1, MAX_DEPTH),
    "fusion.mixer_layers": (0, MAX_DEPTH), "fusion.mixer_heads": (1, MAX_HEADS), "fusion.mixer_ff_mult": (1, MAX_DEPTH),
    "lora.rank": (1, MAX_RANK), "generator.timestep": (0, MAX_TRAIN_TIMESTEPS - 1),
}
# sizes in the diffusers UNet / VAE / scheduler configs (an int or a per-level list of ints; absent or null = default)
_DIFFUSERS_BOUNDS: dict[str, dict[str, tuple[int, int]]] = {
    "unet": {"block_out_channels": (1, MAX_WIDTH), "layers_per_block": (1, MAX_DEPTH),
             "cross_attention_dim": (1, MAX_WIDTH), "attention_head_dim": (1, MAX_WIDTH),
             "num_attention_heads": (1, MAX_HEADS), "transformer_layers_per_block": (1, MAX_DEPTH),
             "in_channels": (1, MAX_IMAGE_CHANNELS), "out_channels": (1, MAX_IMAGE_CHANNELS),
             "norm_num_groups": (1, MAX_WIDTH), "sample_size": (1, MAX_SIDE)},
    "vae": {"block_out_channels": (1, MAX_WIDTH), "layers_per_block": (1, MAX_DEPTH),
            "latent_channels": (1, MAX_IMAGE_CHANNELS), "in_channels": (1, MAX_IMAGE_CHANNELS),
            "out_channels": (1, MAX_IMAGE_CHANNELS), "norm_num_groups": (1, MAX_WIDTH), "sample_size": (1, MAX_SIDE)},
    "scheduler": {"num_train_timesteps": (1, MAX_TRAIN_TIMESTEPS)},
}
SECTIONS = ("vre", "identity", "features", "fusion", "lora", "generator")
_CHOICES = {"variant": VARIANTS, "identity.pooling": ("attention", "mean"), "vre.input_norm": ("auto", "single", "double"),
            "fusion.lq_tokens": ("normed", "raw"), "fusion.absent_tokens": ("null", "masked")}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # features.backbone names a file: <name>.onnx


class ConfigError(ValueError):
    """A config field with a wrong type or an out-of-bounds value; ``field`` is its dotted path."""

    def __init__(self, field_path: str, value: Any, problem: str):
        self.field = field_path
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        super().__init__(f"field '{field_path}' = {shown} {problem}")


def _check_int(path: str, value: Any, bounds: tuple[int, int]) -> None:
    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, value, f"is of type {type(value).__name__}, not an integer")
    if not lo <= value <= hi:
        raise ConfigError(path, value, f"is outside {lo}..{hi}")


def _check_ints(path: str, value: Any, bounds: tuple[int, int], allow_scalar: bool, min_len: int = 1) -> None:
    """An int (when ``allow_scalar``) or a list/tuple of ``min_len``..MAX_LIST ints, each within ``bounds``."""
    if allow_scalar and not isinstance(value, (list, tuple)):
        _check_int(path, value, bounds)
        return
    if not isinstance(value, (list, tuple)) or not min_len <= len(value) <= MAX_LIST:
        raise ConfigError(path, value, f"is not a list of {min_len}..{MAX_LIST} integers")
    for i, item in enumerate(value):
        _check_int(f"{path}[{i}]", item, bounds)


def validate_config(config: "HonestFaceConfig") -> None:
    """Check every field's type and bounds (ints are ints, not bools or floats); raise :class:`ConfigError`.

    Runs before any module is built, so a crafted config cannot allocate without bounds or crash a constructor.
    Consistency between fields (e.g. widths divisible by heads) is left to building the model.
    """
    for prefix, section in [("", config)] + [(f"{name}.", getattr(config, name)) for name in SECTIONS]:
        if not dataclasses.is_dataclass(section):
            raise ConfigError(prefix.rstrip("."), section, "is not a config section")
        hints = typing.get_type_hints(type(section))
        for f in dataclasses.fields(section):
            path, value = prefix + f.name, getattr(section, f.name)
            if path in _INT_BOUNDS and typing.get_origin(hints[f.name]) is tuple:
                _check_ints(path, value, _INT_BOUNDS[path], allow_scalar=False, min_len=int(path != "vre.attn_resolutions"))
            elif path in _INT_BOUNDS:
                _check_int(path, value, _INT_BOUNDS[path])
            elif path in _CHOICES and value not in _CHOICES[path]:
                raise ConfigError(path, value, f"is not one of {_CHOICES[path]}")
    _check_named_fields(config)


def _check_named_fields(config: "HonestFaceConfig") -> None:
    """The fields that are not plain sizes: names, the LoRA alpha and targets, the diffusers configs."""
    backbone = config.features.backbone
    if not isinstance(backbone, str) or not _NAME.fullmatch(backbone):
        raise ConfigError("features.backbone", backbone, "is not a model file name (letters, digits, '_', '.', '-')")
    alpha = config.lora.alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1e4:
        raise ConfigError("lora.alpha", alpha, "is not a number in (0, 10000]")
    targets = config.lora.target_modules
    if not isinstance(targets, (list, tuple)) or len(targets) > 256 or not all(
            isinstance(t, str) and 0 < len(t) <= 200 for t in targets):
        raise ConfigError("lora.target_modules", targets, "is not a list of up to 256 module names")
    for part, bounds in _DIFFUSERS_BOUNDS.items():
        section = getattr(config.generator, part)
        if not isinstance(section, dict):
            raise ConfigError(f"generator.{part}", section, "is not a JSON object")
        for key, key_bounds in bounds.items():
            if section.get(key) is not None:
                _check_ints(f"generator.{part}.{key}", section[key], key_bounds, allow_scalar=key != "block_out_channels")
    steps = config.generator.scheduler.get("num_train_timesteps") or 1000
    if config.generator.timestep >= steps:
        raise ConfigError("generator.timestep", config.generator.timestep, f"is not below the scheduler's {steps} steps")
    if config.num_prompt_tokens > MAX_TOKENS:
        raise ConfigError("vre.num_tokens + identity.num_tokens + features.num_tokens", config.num_prompt_tokens,
                          f"is more than {MAX_TOKENS} prompt tokens")


__all__ = [
    "CONFIG_DIR", "ConfigError", "VREConfig", "IdentityEncoderConfig", "FeatureExtractorConfig", "FusionConfig",
    "LoRAConfig", "GeneratorConfig", "HonestFaceConfig", "load_shipped_config", "validate_config",
]
