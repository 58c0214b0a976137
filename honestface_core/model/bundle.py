"""One ``.safetensors`` bundle for every trained HonestFace weight, with the config JSON in its metadata.

Tensor keys: ``vre.*`` (VRE encoder, quant conv, LQ codebook), ``projector.*``, ``identity_encoder.*``,
``feature_extractor.*``, ``fusion.*`` and ``unet_lora.<unet module>.lora_A.weight`` / ``lora_B.weight``.
Metadata: ``format = "honestface"``, ``format_version``, ``config`` (``HonestFaceConfig.to_json()``).
Tensors are stored as float32 (our choice: a float32 -> bf16/fp16 cast after loading is exact, so saving and
reloading gives bit-identical outputs at every dtype). The SD-2.1 base and the face backbone are not in the bundle.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.tensor_checks import check_finite
from honestface_core.model import lora as lora_utils
from honestface_core.model.base_model import load_base_model
from honestface_core.model.config import HonestFaceConfig
from honestface_core.model.honestface import HonestFaceModel

FORMAT = "honestface"
FORMAT_VERSION = "1"
LORA_PREFIX = "unet_lora."
MODULE_PREFIXES = ("vre.", "projector.", "identity_encoder.", "feature_extractor.", "fusion.")
UNET_KEYS = ("cross_attention_dim", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
             "down_block_types", "up_block_types", "attention_head_dim", "use_linear_projection")
VAE_KEYS = ("latent_channels", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types")
#: largest model (parameters and buffers, base UNet + VAE included) a bundle's config may describe; our choice:
#: 4x the SD-2.1 HonestFace model (1.0e9), so a crafted config cannot make the loader allocate without bounds
MAX_PARAMETERS = 4_000_000_000
WHERE_TO_GET = "train with training/ and export with training/export.py (no official weights are published)"


def bundle_state_dict(model: HonestFaceModel) -> dict[str, torch.Tensor]:
    """Every trained tensor of ``model`` as float32 CPU tensors under the bundle's key names."""
    if model.lora_merged:
        raise HonestFaceError("model", "has its LoRA merged into the UNet, so the LoRA cannot be saved separately",
                              "Save the bundle from a model loaded with merge_lora=False")
    tensors = {k: v for k, v in model.state_dict().items() if k.startswith(MODULE_PREFIXES)}
    if lora_utils.has_lora(model.generator.unet):
        tensors.update({LORA_PREFIX + k: v for k, v in lora_utils.get_lora_state_dict(model.generator.unet).items()})
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}


def save_bundle(model: HonestFaceModel, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the bundle to ``path`` (atomically; refuses to replace an existing file unless ``overwrite``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise HonestFaceError(f"bundle path '{path}'", "does not end in .safetensors", "Name the bundle '<name>.safetensors'")
    if path.exists() and not overwrite:
        raise HonestFaceError(f"bundle path '{path}'", "already exists", "Choose a new file name or pass overwrite=True")
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": model.config.to_json()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(bundle_state_dict(model), str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_bundle(path: str | os.PathLike) -> tuple[HonestFaceConfig, dict[str, torch.Tensor]]:
    """Config and tensors of a bundle; clear errors for a missing, corrupt or foreign file, a config with a wrong
    type or an out-of-bounds size in any field (checked before the tensors are read), and NaN / infinite weights."""
    path = Path(path)
    if not path.is_file():
        raise MissingModelError(path.name, path.parent, WHERE_TO_GET)
    what = f"HonestFace bundle '{path}'"
    try:
        with safe_open(str(path), framework="pt") as f:
            config = _bundle_config(f.metadata() or {}, what)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except HonestFaceError:
        raise
    except Exception as exc:
        raise HonestFaceError(what, f"is not a readable .safetensors file ({type(exc).__name__}: {exc})",
                              "Re-export it with training/export.py; the file may be truncated or not a bundle") from exc
    check_finite(tensors, what, "The training run that produced it diverged or the file is damaged: export the bundle "
                 "again from an earlier checkpoint")
    return config, tensors


def _bundle_config(metadata: dict[str, str], what: str) -> HonestFaceConfig:
    if metadata.get("format") != FORMAT:
        raise HonestFaceError(what, "has no HonestFace metadata (format != 'honestface')",
                              "Use a bundle written by training/export.py (OSDFace weights load with load_osdface)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise HonestFaceError(what, f"has format version {metadata.get('format_version')!r}, this code reads {FORMAT_VERSION!r}",
                              "Update comfyui-honestface or re-export the bundle")
    try:
        return HonestFaceConfig.from_json(metadata["config"])
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise HonestFaceError(what, f"has an invalid config in its metadata ({str(exc)[:300]})",
                              "Re-export the bundle with training/export.py") from exc


def check_bundle_tensors(config: HonestFaceConfig, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Check a bundle's tensors against its config before anything real is built or loaded: missing, unexpected or
    resized module tensors and LoRA matrices that do not fit the UNet are refused, naming the bundle."""
    fix = "Re-export the bundle with training/export.py"
    model = _build_on_meta(config, what, fix)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(MODULE_PREFIXES)}
    module_state = {k: v for k, v in tensors.items() if not k.startswith(LORA_PREFIX)}
    missing, unexpected = sorted(set(expected) - set(module_state)), sorted(set(module_state) - set(expected))
    resized = sorted(f"{k} {tuple(module_state[k].shape)} != {expected[k]}" for k in set(expected) & set(module_state)
                     if tuple(module_state[k].shape) != expected[k])
    if missing or unexpected or resized:
        raise HonestFaceError(what, f"does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                              f"wrong shape {resized[:3]})", fix)
    lora_state = {k[len(LORA_PREFIX):]: v for k, v in tensors.items() if k.startswith(LORA_PREFIX)}
    try:
        modules = lora_utils.lora_modules(lora_state)
    except ValueError as exc:
        raise HonestFaceError(what, f"has a damaged UNet LoRA ({exc})", fix) from exc
    for name, (a, b) in modules.items():
        try:
            weight = model.generator.unet.get_submodule(name).weight
        except AttributeError:
            raise HonestFaceError(what, f"has a LoRA for '{name}', which the UNet of its config does not have", fix) from None
        if b.shape[0] != weight.shape[0] or a.shape[1:] != weight.shape[1:] or b.numel() != b.shape[0] * a.shape[0]:
            raise HonestFaceError(what, f"has LoRA matrices for '{name}' of shapes {tuple(a.shape)} / {tuple(b.shape)}, "
                                  f"which do not fit its weight {tuple(weight.shape)}", fix)


def _build_on_meta(config: HonestFaceConfig, what: str, fix: str) -> HonestFaceModel:
    """The whole model (random-init UNet/VAE from the config) on the ``meta`` device: shapes only, no memory.
    Refuses a config that no constructor accepts or that describes more than :data:`MAX_PARAMETERS`."""
    try:
        with torch.device("meta"):
            model = HonestFaceModel(config)
    except Exception as exc:  # any constructor's complaint about an inconsistent config (e.g. width % heads)
        reason = exc.problem if isinstance(exc, HonestFaceError) else f"{type(exc).__name__}: {str(exc)[:200]}"
        raise HonestFaceError(what, f"has a config that does not describe a buildable model ({reason})", fix) from exc
    count = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    if count > MAX_PARAMETERS:
        raise HonestFaceError(what, f"has a config for a model of {count / 1e9:.1f} billion parameters, more than the "
                              f"{MAX_PARAMETERS / 1e9:.0f} billion this loader accepts", fix)
    return model


def check_base_matches(config: HonestFaceConfig, unet_config: dict[str, Any], vae_config: dict[str, Any],
                       base: str | os.PathLike = "base model") -> None:
    """Raise if the base UNet/VAE configs differ from the bundle's config in any structural hyper-parameter."""
    diffs = [f"unet.{k}: base {_norm(unet_config.get(k))} != bundle {_norm(config.generator.unet.get(k))}"
             for k in UNET_KEYS if _norm(unet_config.get(k)) != _norm(config.generator.unet.get(k))]
    diffs += [f"vae.{k}: base {_norm(vae_config.get(k))} != bundle {_norm(config.generator.vae.get(k))}"
              for k in VAE_KEYS if _norm(vae_config.get(k)) != _norm(config.generator.vae.get(k))]
    if diffs:
        raise HonestFaceError(f"base model '{base}'", "does not match the bundle's config: " + "; ".join(diffs),
                              "Use the SD-2.1-base model the bundle was trained on")


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(list(value) if isinstance(value, tuple) else value))


def load_honestface(bundle_path: str | os.PathLike, base_path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, merge_lora: bool = False, backbone: Any = None) -> HonestFaceModel:
    """Load a bundle on top of the SD-2.1 base; returns an eval-mode model on ``device`` in ``dtype``.

    Args:
        bundle_path: the ``.safetensors`` bundle.
        base_path: SD-2.1-base diffusers folder or single-file checkpoint.
        merge_lora: add the LoRA into the UNet weights (faster inference; the bundle can then not be re-saved).
        backbone: the face backbone (an ``iresnet.FaceBackbone`` or the path of an insightface ArcFace ONNX
            file); only needed to restore with references.
    """
    config, tensors = read_bundle(bundle_path)
    what = f"HonestFace bundle '{bundle_path}'"
    check_bundle_tensors(config, tensors, what)  # before the (slow) base model is read
    folder_configs = [Path(base_path) / sub / "config.json" for sub in ("unet", "vae")]
    if all(p.is_file() for p in folder_configs):  # check before reading weights of a mismatched base
        try:
            unet_config, vae_config = (json.loads(p.read_text()) for p in folder_configs)
            if not isinstance(unet_config, dict) or not isinstance(vae_config, dict):
                raise ValueError("a config.json is not a JSON object")
        except (OSError, ValueError) as exc:
            raise HonestFaceError(f"base model folder '{base_path}'", f"has an unreadable config.json ({exc})",
                                  "Use an intact SD-2.1-base diffusers folder") from exc
        check_base_matches(config, unet_config, vae_config, base_path)
    unet, vae = load_base_model(base_path, config.generator.unet, config.generator.vae)
    check_base_matches(config, dict(unet.config), dict(vae.config), base_path)
    if isinstance(backbone, (str, os.PathLike)):
        from honestface_core.model.iresnet import FaceBackbone

        backbone = FaceBackbone.from_onnx(backbone)
    model = HonestFaceModel(config, unet, vae, backbone)
    lora_state = {k[len(LORA_PREFIX):]: v for k, v in tensors.items() if k.startswith(LORA_PREFIX)}
    module_state = {k: v for k, v in tensors.items() if not k.startswith(LORA_PREFIX)}
    try:
        model.load_state_dict(module_state, strict=False)
        if lora_state:
            lora_utils.apply_lora_state_dict(model.generator.unet, lora_state, config.lora.alpha, merge_lora)
            model.lora_merged = merge_lora
    except (RuntimeError, ValueError) as exc:
        raise HonestFaceError(what, f"has weights that do not fit the model ({str(exc)[:300]})",
                              "Re-export the bundle; it may belong to another base model") from exc
    model.freeze_base()
    return model.to(device=device, dtype=dtype).eval()
