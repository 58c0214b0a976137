"""Plain dataclass configs of the HonestFace model (JSON round trip through ``to_dict`` / ``from_dict``).

Values fixed by the papers (OSDFace VRE, SD-2.1-base, LoRA rank/alpha 16, t = 399) are the defaults. Every other
value is **our choice** (the HonestFace method text is not public) and is marked so in the field comments.
``HonestFaceConfig.tiny()`` gives the same structure with tiny widths so tests run a 512x512 forward on CPU in seconds.
"""

from __future__ import annotations

import dataclasses
import json
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


@dataclass
class LoRAConfig:
    """LoRA on the SD-2.1 UNet (OSDFace: rank 16, alpha 16, conv and attention layers)."""

    rank: int = 16
    alpha: float = 16.0
    # our choice, following OSEDiff/OSDFace's "conv + attention" target list
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
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.identity.pooling not in ("attention", "mean"):
            raise ValueError(f"identity.pooling must be 'attention' or 'mean', got {self.identity.pooling!r}")

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


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a (nested) dataclass from a dict; lists become tuples where the field is a tuple; unknown keys fail."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


__all__ = [
    "CONFIG_DIR", "VREConfig", "IdentityEncoderConfig", "FeatureExtractorConfig", "FusionConfig", "LoRAConfig",
    "GeneratorConfig", "HonestFaceConfig", "load_shipped_config",
]
