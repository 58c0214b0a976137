"""Atomic training checkpoints that resume exactly.

A checkpoint is a folder ``<output>/checkpoints/step_00001234/`` written as ``.tmp-step_00001234`` first and
renamed when complete, so a crash never leaves a half-written checkpoint that looks valid. Contents:

- ``<name>.safetensors`` for every module's trainable (or listed) tensors (generator, discriminator, EMA);
- ``<name>.pt`` optimizer / scheduler states (tensors and plain containers only: read back with
  ``torch.load(weights_only=True)``);
- ``rng.pt``: the torch, CUDA, Python and NumPy RNG states of every training process (``{"ranks": [...]}``);
- ``state.json``: step, micro-batch position, config, number of processes, digests of each process's weights.

Only process 0 writes; the other processes send it their RNG states (see ``training/engine.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from honestface_core.errors import HonestFaceError

STEP_DIR = re.compile(r"^step_(\d{8})$")


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``module`` that training changes: parameters with ``requires_grad`` (names as in state_dict)."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    """This process's torch (CPU + every CUDA device), Python and NumPy RNG states, as tensors and plain lists."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": [py[0], list(py[1]), py[2]],
                             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


def tensors_digest(*flats: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the names, dtypes, shapes and bytes of flat tensor dicts (in name order): equal digests mean
    bit-identical tensors, so processes can compare their weights without sending them."""
    h = hashlib.sha256()
    for flat in flats:
        for name in sorted(flat):
            t = flat[name].detach().contiguous().cpu()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(output_dir: str | Path, step: int, tensors: dict[str, dict[str, torch.Tensor]],
                    objects: dict[str, Any], state: dict[str, Any], keep: int = 0,
                    rng_states: list[dict[str, Any]] | None = None) -> Path:
    """Write ``output_dir/checkpoints/step_<step>`` atomically and keep only the ``keep`` newest (0 = all).

    Args:
        tensors: name -> flat tensor dict, each saved as ``name.safetensors``.
        objects: name -> state dict of an optimizer/scheduler, each saved as ``name.pt``.
        state: JSON-able trainer state (step, position, config...).
        rng_states: :func:`rng_state` of every process, in process order (default: this process's only).
    """
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, flat in tensors.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in flat.items()}, str(tmp / f"{name}.safetensors"))
    for name, obj in objects.items():
        torch.save(obj, tmp / f"{name}.pt")
    torch.save({"ranks": rng_states or [rng_state()]}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or the newest checkpoint of a run's output folder."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise HonestFaceError(f"checkpoint '{path}'", "contains no complete checkpoint (step_XXXXXXXX with state.json)",
                              "Pass a run's output folder or one of its checkpoints/step_* folders")
    return found[-1]


def load_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Read ``state.json`` of a checkpoint (see :func:`resolve_checkpoint`); returns (folder, state)."""
    ckpt = resolve_checkpoint(path)
    return ckpt, json.loads((ckpt / "state.json").read_text())


def load_tensors(ckpt: Path, name: str) -> dict[str, torch.Tensor] | None:
    f = ckpt / f"{name}.safetensors"
    return load_file(str(f)) if f.is_file() else None


def load_object(ckpt: Path, name: str) -> Any | None:
    f = ckpt / f"{name}.pt"
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None


def restore_rng(ckpt: Path, rank: int = 0) -> bool:
    """Restore process ``rank``'s RNG states saved by :func:`save_checkpoint`; False if the checkpoint has none
    for that process (it was written by fewer processes)."""
    ranks = load_object(ckpt, "rng")["ranks"]
    if rank >= len(ranks):
        return False
    set_rng_state(ranks[rank])
    return True


def load_trainable(module: torch.nn.Module, flat: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors into ``module``; every trainable parameter must be present."""
    params = dict(module.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in flat]
    unknown = [n for n in flat if n not in params]
    if missing or unknown:
        raise HonestFaceError("checkpoint", f"does not match the model (missing {missing[:3]}, unexpected {unknown[:3]})",
                              "Resume with the same config the run was started with")
    with torch.no_grad():
        for n, t in flat.items():
            params[n].copy_(t.to(params[n].dtype))
