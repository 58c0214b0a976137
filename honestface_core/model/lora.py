"""UNet LoRA through peft: inject, read/write state dicts, merge into the base weights.

LoRA state dicts are kept in diffusers' PEFT layout without adapter name: ``<module>.lora_A.weight`` /
``<module>.lora_B.weight`` (module path inside the UNet). Files may also use an ``unet.`` prefix and the older
``<module>.lora.down.weight`` / ``<module>.lora.up.weight`` names (diffusers' ``convert_state_dict_to_diffusers``
output, OSDFace's release); :func:`normalise_lora_keys` maps all of them to the PEFT layout.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

ADAPTER = "default"
_OLD = ((".lora.down.weight", ".lora_A.weight"), (".lora.up.weight", ".lora_B.weight"),
        (".lora_A.default.weight", ".lora_A.weight"), (".lora_B.default.weight", ".lora_B.weight"))


def normalise_lora_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``unet.`` / ``base_model.model.`` prefixes and map ``lora.down/up`` to ``lora_A/B``.

    Raises ValueError for keys that are not UNet LoRA matrices (e.g. text-encoder LoRA or alpha tensors).
    """
    out = {}
    for key, value in state.items():
        new = re.sub(r"^(unet\.|base_model\.model\.)", "", key)
        for old, repl in _OLD:
            if new.endswith(old):
                new = new[: -len(old)] + repl
        if not (new.endswith(".lora_A.weight") or new.endswith(".lora_B.weight")):
            raise ValueError(f"not a UNet LoRA weight: {key!r}")
        out[new] = value
    return out


def lora_modules(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path -> (A, B) from a normalised state dict; raises ValueError for unpaired or rank-mismatched keys."""
    modules = {}
    for key in state:
        if key.endswith(".lora_A.weight"):
            name = key[: -len(".lora_A.weight")]
            b_key = f"{name}.lora_B.weight"
            if b_key not in state:
                raise ValueError(f"LoRA matrix {key!r} has no matching {b_key!r}")
            a, b = state[key], state[b_key]
            if a.shape[0] != b.shape[1]:
                raise ValueError(f"LoRA rank mismatch at {name!r}: A {tuple(a.shape)}, B {tuple(b.shape)}")
            modules[name] = (a, b)
    if 2 * len(modules) != len(state):
        raise ValueError("LoRA state dict has lora_B matrices without lora_A")
    return modules


def lora_rank(state: Mapping[str, torch.Tensor]) -> int:
    """The (single) rank of a normalised LoRA state dict."""
    ranks = {a.shape[0] for a, _ in lora_modules(state).values()}
    if len(ranks) != 1:
        raise ValueError(f"LoRA state dict mixes ranks {sorted(ranks)}")
    return ranks.pop()


def inject_lora(unet: nn.Module, rank: int, alpha: float, target_modules: Iterable[str]) -> None:
    """Add trainable PEFT LoRA layers (B initialised to zero, so the UNet output is unchanged) to ``unet``."""
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights=True)
    unet.add_adapter(config, adapter_name=ADAPTER)


def has_lora(unet: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in unet.modules())


def get_lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """Normalised LoRA state dict (``<module>.lora_A.weight`` ...) of an injected UNet."""
    return normalise_lora_keys(get_peft_model_state_dict(unet, adapter_name=ADAPTER))


def load_lora_state_dict(unet: nn.Module, state: Mapping[str, torch.Tensor], alpha: float) -> None:
    """Inject LoRA on exactly the modules named in ``state`` (rank from its shapes) and load the matrices."""
    modules = lora_modules(state)
    missing = [name for name in modules if _get(unet, name) is None]
    if missing:
        raise ValueError(f"LoRA targets modules the UNet does not have, e.g. {missing[:3]}")
    inject_lora(unet, lora_rank(state), alpha, sorted(modules))
    result = set_peft_model_state_dict(unet, dict(state), adapter_name=ADAPTER)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise ValueError(f"LoRA weights were not used: {unexpected[:3]}")


def merge_lora_state_dict(unet: nn.Module, state: Mapping[str, torch.Tensor], alpha: float) -> None:
    """Add ``alpha / rank * B @ A`` to each target module's weight (Linear or Conv2d), computed in float32."""
    for name, (a, b) in lora_modules(state).items():
        module = _get(unet, name)
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            raise ValueError(f"LoRA target {name!r} is not a Linear or Conv2d layer in the UNet")
        weight = module.weight
        delta = b.float().reshape(b.shape[0], -1) @ a.float().reshape(a.shape[0], -1)
        delta = delta.reshape(weight.shape) * (alpha / a.shape[0])
        with torch.no_grad():
            weight.copy_((weight.float() + delta.to(weight.device)).to(weight.dtype))


def apply_lora_state_dict(unet: nn.Module, state: Mapping[str, torch.Tensor], alpha: float, merge: bool) -> None:
    """Merge ``state`` into the UNet's weights when ``merge`` (no run-time cost), else load it as LoRA layers."""
    (merge_lora_state_dict if merge else load_lora_state_dict)(unet, state, alpha)


def _get(root: nn.Module, name: str) -> nn.Module | None:
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None
