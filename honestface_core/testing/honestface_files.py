"""Random-weight HonestFace model files in the exact on-disk formats (tests, wiring graphs without real weights).

``write_honestface_test_models(models_dir)`` writes, under a ComfyUI-style ``models/`` folder:

- ``diffusers/stable-diffusion-2-1-base/{unet,vae,scheduler}``: a tiny SD-2.1-shaped base (same block structure,
  2 layers per block, cross-attention 1024, tiny channel widths) as a diffusers folder;
- ``checkpoints/v2-1_512-ema-pruned.safetensors``: the same weights as a single-file checkpoint in the original
  LDM key layout (``model.diffusion_model.*``, ``first_stage_model.*``);
- ``honestface/honestface.safetensors``: a tiny HonestFace bundle (``HonestFaceConfig.tiny()``, non-zero LoRA);
- ``honestface/osdface/``: ``associate_2.ckpt``, ``pytorch_lora_weights.safetensors``,
  ``embedding_change_weights.pth`` with OSDFace's key names (tiny widths).

All outputs are meaningless. Existing files are never overwritten.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from honestface_core.model.config import HonestFaceConfig, load_shipped_config

BASE_NAME = "stable-diffusion-2-1-base"
CHECKPOINT_NAME = "v2-1_512-ema-pruned.safetensors"
OSDFACE_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_shortcut", "proj_in", "proj_out")

_RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                  ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_VAE_ATTN_TO_LDM = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _rename(rest: str, table: tuple[tuple[str, str], ...]) -> str:
    for old, new in table:
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int, attn_up_blocks: set[int]) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> original LDM keys (``model.diffusion_model.*``)."""
    n = layers_per_block + 1
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, value in state.items():
        new = None
        for old, repl in fixed.items():
            if key.startswith(old + "."):
                new = repl + key[len(old):]
        if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            b, i, rest = int(m[1]), int(m[2]), m[3]
            new = f"input_blocks.{1 + b * n + i}.0.{_rename(rest, _RESNET_TO_LDM)}"
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            new = f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename(m[2], _RESNET_TO_LDM)}"
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            new = f"output_blocks.{int(m[1]) * n + int(m[2])}.0.{_rename(m[3], _RESNET_TO_LDM)}"
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            new = f"output_blocks.{int(m[1]) * n + int(m[2])}.1.{m[3]}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            b = int(m[1])
            new = f"output_blocks.{b * n + layers_per_block}.{2 if b in attn_up_blocks else 1}.conv.{m[2]}"
        if new is None:
            raise KeyError(f"no LDM name for UNet key {key!r}")
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> original LDM keys (``first_stage_model.*``; attention as 1x1 convs)."""
    out = {}
    for key, value in state.items():
        new = key
        if m := re.match(r"(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            i = int(m[3]) if m[2] == "down" else num_blocks - 1 - int(m[3])
            new = f"{m[1]}.{m[2]}.{i}.block.{m[4]}.{_rename(m[5], (('conv_shortcut', 'nin_shortcut'),))}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key):
            new = f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename(m[3], (('conv_shortcut', 'nin_shortcut'),))}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
            new = f"{m[1]}.mid.attn_1.{_rename(m[2], _VAE_ATTN_TO_LDM)}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        elif m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", key):
            new = f"{m[1]}.norm_out.{m[2]}"
        out["first_stage_model." + new] = value
    return out


def tiny_base_models(seed: int = 0) -> tuple[UNet2DConditionModel, AutoencoderKL]:
    """The tiny SD-2.1-shaped UNet + VAE of ``HonestFaceConfig.tiny()`` with seeded random weights."""
    gen = HonestFaceConfig.tiny().generator
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return UNet2DConditionModel.from_config(gen.unet), AutoencoderKL.from_config(gen.vae)


def _randomise_lora(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Give LoRA B matrices random values (peft initialises them to zero) so the LoRA changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _fresh(path: Path, written: list[Path]) -> bool:
    """True if ``path`` does not exist yet (then it will be written); existing files are kept."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    written.append(path)
    return True


def write_honestface_test_models(models_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Write the tiny base (folder + single file), a tiny HonestFace bundle and OSDFace-format files."""
    from honestface_core.model import lora as lora_utils
    from honestface_core.model.bundle import save_bundle
    from honestface_core.model.honestface import HonestFaceModel
    from honestface_core.model.vre import TokenProjector, VisualRepresentationEmbedder

    models_dir = Path(models_dir)
    written: list[Path] = []
    unet, vae = tiny_base_models(seed)
    base = models_dir / "diffusers" / BASE_NAME
    if _fresh(base / "unet" / "diffusion_pytorch_model.safetensors", written):
        unet.save_pretrained(base / "unet", safe_serialization=True)
        written.append(base / "unet" / "config.json")
    if _fresh(base / "vae" / "diffusion_pytorch_model.safetensors", written):
        vae.save_pretrained(base / "vae", safe_serialization=True)
        written.append(base / "vae" / "config.json")
    if _fresh(base / "scheduler" / "scheduler_config.json", written):
        (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(load_shipped_config("scheduler"), indent=2))
    ckpt = models_dir / "checkpoints" / CHECKPOINT_NAME
    if _fresh(ckpt, written):
        attn_up = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
        state = unet_to_ldm(unet.state_dict(), unet.config.layers_per_block, attn_up)
        state.update(vae_to_ldm(vae.state_dict(), len(vae.config.down_block_types)))
        save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt), metadata={"note": "random weights (honestface make-test-models)"})

    bundle = models_dir / "honestface" / "honestface.safetensors"
    if _fresh(bundle, written):
        with torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            model = HonestFaceModel(HonestFaceConfig.tiny(), *tiny_base_models(seed))
            model.add_lora()
            _randomise_lora(model, seed + 2)
        save_bundle(model, bundle)

    osd = models_dir / "honestface" / "osdface"
    cfg = HonestFaceConfig.tiny(variant="osdface")
    with torch.random.fork_rng():
        torch.manual_seed(seed + 3)
        vre, projector = VisualRepresentationEmbedder(cfg.vre), TokenProjector(cfg.vre.codebook_dim, cfg.vre.projector_hidden, cfg.prompt_dim)
        decoder_weight = torch.randn(4, cfg.vre.z_channels, 3, 3)
    if _fresh(osd / "associate_2.ckpt", written):
        state = {}
        for key, value in vre.state_dict().items():
            state["vqvae_LQ." + ("quantize.embedding.weight" if key == "codebook.weight" else key)] = value
        state["vqvae_LQ.decoder.conv_in.weight"] = decoder_weight  # ignored by the loader, as in the real file
        state["vqvae_HQ.quantize.embedding.weight"] = torch.randn_like(vre.codebook.weight)
        torch.save({"state_dict": state, "global_step": 0}, osd / "associate_2.ckpt")
    if _fresh(osd / "embedding_change_weights.pth", written):
        torch.save(projector.state_dict(), osd / "embedding_change_weights.pth")
    if _fresh(osd / "pytorch_lora_weights.safetensors", written):
        lora_unet, _ = tiny_base_models(seed)
        lora_utils.inject_lora(lora_unet, 4, 4.0, OSDFACE_LORA_TARGETS)
        _randomise_lora(lora_unet, seed + 4)
        lora_state = {"unet." + k: v.contiguous() for k, v in lora_utils.get_lora_state_dict(lora_unet).items()}
        save_file(lora_state, str(osd / "pytorch_lora_weights.safetensors"))
    return written
