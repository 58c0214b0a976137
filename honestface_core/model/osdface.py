"""Run OSDFace's released weights (blind one-step restoration) with this package's model code.

Files (downloaded by the user from https://github.com/jkwang28/OSDFace into ``models/honestface/osdface``):

- ``associate_2.ckpt``: VRE checkpoint (``{"state_dict": ...}``); the LQ branch keys start with ``vqvae_LQ.``
  (``vqvae_LQ.encoder.*``, ``vqvae_LQ.quant_conv.*``, ``vqvae_LQ.quantize.embedding.weight``); its decoder and
  any other branch are ignored. Expected to be a PyTorch Lightning 1.0.8 checkpoint (``callbacks`` keyed by
  the ``ModelCheckpoint`` class, optimizer states); :mod:`..weight_files` reads it with ``torch.load(weights_only=True)``
  and inert stand-ins for Lightning's objects (docs/model.md), without Lightning installed.
- ``pytorch_lora_weights.safetensors``: UNet LoRA, PEFT ``lora_A/lora_B`` or older ``lora.down/lora.up`` names,
  with or without the ``unet.`` prefix.
- ``embedding_change_weights.pth``: the token projector (``conv1``/``conv2`` 1x1 Conv1d).

The model runs with ``variant="osdface"``: prompt = projected VRE tokens only, and the VRE sees the image
normalised twice (``(x - 0.5) / 0.5`` on an input already in [-1, 1]) as OSDFace's code does. The VRE widths are
read from the checkpoint's tensor shapes; GroupNorm groups are not stored in a state dict and are taken as
``min(32, base width)`` (32 for the real file) -- our choice.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.tensor_checks import check_finite
from honestface_core.files.weight_files import read_state_dict
from honestface_core.model import lora as lora_utils
from honestface_core.model.base_model import load_base_model
from honestface_core.model.config import GeneratorConfig, HonestFaceConfig, LoRAConfig, VREConfig
from honestface_core.model.honestface import HonestFaceModel

VRE_FILE = "associate_2.ckpt"
LORA_FILE = "pytorch_lora_weights.safetensors"
PROJECTOR_FILE = "embedding_change_weights.pth"
SOURCE = "https://github.com/jkwang28/OSDFace (released checkpoints)"
LQ_PREFIX = "vqvae_LQ."


def read_vre_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The LQ branch of ``associate_2.ckpt`` under this package's VRE key names."""
    state = read_state_dict(path, f"OSDFace's {path.name}")
    out, used = {}, {}
    for key, value in state.items():
        if not key.startswith(LQ_PREFIX) or key.startswith(LQ_PREFIX + "decoder."):
            continue
        name = key[len(LQ_PREFIX):]
        if name == "quantize.embedding.weight":
            out["codebook.weight"] = used[key] = value
        elif name.startswith(("encoder.", "quant_conv.")):
            out[name] = used[key] = value
    check_finite(used, f"OSDFace file '{path}'", f"Download OSDFace's {VRE_FILE} again (this copy is damaged)")
    if "codebook.weight" not in out or "encoder.conv_in.weight" not in out:
        raise HonestFaceError(f"OSDFace VRE checkpoint '{path}'", f"has no '{LQ_PREFIX}encoder' / '{LQ_PREFIX}quantize' weights",
                              f"Use OSDFace's {VRE_FILE}")
    return out


def infer_vre_config(state: dict[str, torch.Tensor]) -> VREConfig:
    """VRE hyper-parameters from the tensor shapes of a VRE state dict."""
    base = state["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.block\.0\.conv1\.weight$", k))})
    blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.down.0.block.")})
    resolution = 16 * 2 ** (len(levels) - 1)  # OSDFace's token grid is 16x16 (512 input, 6 levels)
    attn = tuple(resolution // 2**i for i in levels if f"encoder.down.{i}.attn.0.q.weight" in state)
    codebook = state["codebook.weight"]
    return VREConfig(
        in_channels=state["encoder.conv_in.weight"].shape[1], base_channels=base,
        channel_mult=tuple(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // base for i in levels),
        num_res_blocks=blocks, attn_resolutions=attn, resolution=resolution,
        z_channels=state["encoder.conv_out.weight"].shape[0], codebook_size=codebook.shape[0],
        codebook_dim=codebook.shape[1], norm_groups=min(32, base),
    )


@dataclass
class OSDFaceFiles:
    """OSDFace's three files, read and checked: VRE state (this package's key names), projector state, LoRA
    state (normalised PEFT names) and its rank."""

    folder: Path
    vre: dict[str, torch.Tensor]
    projector: dict[str, torch.Tensor]
    lora: dict[str, torch.Tensor]
    rank: int

    def vre_config(self) -> VREConfig:
        """The VRE sizes (and the projector width) the files hold; HonestFaceError if they describe no VRE."""
        try:
            vre = infer_vre_config(self.vre)
            vre.projector_hidden = self.projector["conv1.weight"].shape[0]
            return vre
        except (KeyError, IndexError, ValueError, ZeroDivisionError) as exc:
            raise HonestFaceError(f"OSDFace files in '{self.folder}'", f"do not describe an OSDFace model ({str(exc)[:200]})",
                                  f"Use OSDFace's released {VRE_FILE} and {PROJECTOR_FILE}") from exc

    @property
    def prompt_dim(self) -> int:
        return self.projector["conv2.weight"].shape[0]


def read_osdface_files(folder: str | os.PathLike) -> OSDFaceFiles:
    """Read OSDFace's three files in ``folder`` (MissingModelError for a missing one; HonestFaceError for a file
    that is not OSDFace's or holds NaN / infinite values)."""
    folder = Path(folder)
    paths = {}
    for name in (VRE_FILE, LORA_FILE, PROJECTOR_FILE):
        paths[name] = folder / name
        if not paths[name].is_file():
            raise MissingModelError(name, folder, SOURCE)
    vre_state = read_vre_checkpoint(paths[VRE_FILE])
    projector = read_state_dict(paths[PROJECTOR_FILE], f"OSDFace's {PROJECTOR_FILE}")
    if set(projector) != {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"}:
        raise HonestFaceError(f"OSDFace projector '{paths[PROJECTOR_FILE]}'", f"has keys {sorted(projector)[:6]}, expected conv1/conv2",
                              f"Use OSDFace's {PROJECTOR_FILE}")
    try:
        from safetensors.torch import load_file

        lora_file = load_file(str(paths[LORA_FILE]))
        lora_state = lora_utils.normalise_lora_keys(lora_file)
        rank = lora_utils.lora_rank(lora_state)
    except Exception as exc:
        raise HonestFaceError(f"OSDFace LoRA '{paths[LORA_FILE]}'", f"is not a UNet LoRA file ({str(exc)[:200]})",
                              f"Use OSDFace's {LORA_FILE}") from exc
    for name, state in ((PROJECTOR_FILE, projector), (LORA_FILE, lora_file)):
        check_finite(state, f"OSDFace file '{paths[name]}'", f"Download OSDFace's {name} again (this copy is damaged)")
    return OSDFaceFiles(folder, vre_state, projector, lora_state, rank)


def load_osdface(folder: str | os.PathLike, base_path: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, merge_lora: bool = False, lora_alpha: float | None = None,
                 generator: GeneratorConfig | None = None) -> HonestFaceModel:
    """Build a blind ``variant="osdface"`` model from OSDFace's three files in ``folder`` + the SD-2.1 base.

    Args:
        lora_alpha: LoRA alpha; default = the file's rank (scale 1), as diffusers' ``load_lora_weights`` does for
            OSDFace's file (rank 16, alpha 16).
        generator: UNet/VAE configs for a single-file base checkpoint (default: the shipped SD-2.1-base configs).
    """
    files = read_osdface_files(folder)
    gen = generator or GeneratorConfig()
    vre = files.vre_config()  # sizes read from the files, checked (types and bounds) before anything is built
    try:
        config = HonestFaceConfig(variant="osdface", prompt_dim=files.prompt_dim, vre=vre,
                                  lora=LoRAConfig(rank=files.rank, alpha=float(lora_alpha or files.rank), target_modules=()),
                                  generator=gen)
    except ValueError as exc:
        raise HonestFaceError(f"OSDFace files in '{files.folder}'", f"do not describe an OSDFace model ({str(exc)[:200]})",
                              f"Use OSDFace's released {VRE_FILE} and {PROJECTOR_FILE}") from exc
    unet, vae = load_base_model(base_path, gen.unet, gen.vae)
    config.generator = GeneratorConfig(timestep=gen.timestep, unet=dict(unet.config), vae=dict(vae.config),
                                       scheduler=gen.scheduler)
    model = HonestFaceModel(config, unet, vae)
    try:
        model.vre.load_state_dict(files.vre, strict=True)
        model.projector.load_state_dict(files.projector, strict=True)
        lora_utils.apply_lora_state_dict(model.generator.unet, files.lora, config.lora.alpha, merge_lora)
        model.lora_merged = merge_lora
    except (RuntimeError, ValueError) as exc:
        raise HonestFaceError(f"OSDFace files in '{files.folder}'", f"do not fit the model ({str(exc)[:300]})",
                              "Use OSDFace's release files with an SD-2.1-base model") from exc
    model.freeze_base()
    return model.to(device=device, dtype=dtype).eval()
