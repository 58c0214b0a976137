"""Export a training checkpoint as the HonestFace bundle the model loader node reads.

    python training/export.py runs/tiny OUT.safetensors            # newest checkpoint of a run
    python training/export.py runs/tiny/checkpoints/step_00000040 OUT.safetensors --force

The EMA weights are exported when the run kept an EMA (``--no-ema`` exports the raw weights). The bundle holds
the trained modules, the LoRA and the VRE; the SD-2.1 base and the face backbone stay separate files (the
command prints the ones the run used). An existing output file is never replaced without ``--force``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from honestface_core.errors import HonestFaceError, exit_code


def export_checkpoint(checkpoint: str | Path, out: str | Path, force: bool = False, use_ema: bool = True) -> Path:
    """Write the bundle of ``checkpoint`` (a run folder or a ``checkpoints/step_*`` folder) to ``out``."""
    from honestface_core.model.bundle import save_bundle
    from training import checkpoint as ckpt
    from training.config import config_from_dict
    from training.modeling import build_model

    out = Path(out)
    if out.exists() and not force:
        raise HonestFaceError(f"output '{out}'", "already exists", "Choose another file name or pass --force")
    path, state = ckpt.load_checkpoint(checkpoint)
    cfg = config_from_dict(state["config"])
    model = build_model(cfg, path.parent.parent)
    ema = ckpt.load_tensors(path, "ema") if use_ema else None
    ckpt.load_trainable(model, ema if ema is not None else ckpt.load_tensors(path, "generator"))
    model.vre.load_state_dict(ckpt.load_tensors(path, "vre"))
    save_bundle(model, out, overwrite=force)
    print(f"wrote {out} from {path} ({'EMA' if ema is not None else 'raw'} weights, step {state['step']}); "
          f"base: {model.base_paths['base']}; face backbone: {model.base_paths['backbone']}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Export a HonestFace training checkpoint as a .safetensors bundle.")
    p.add_argument("checkpoint", help="run folder (newest checkpoint) or checkpoints/step_XXXXXXXX folder")
    p.add_argument("out", help="bundle path, e.g. models/honestface/honestface.safetensors")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights even when the run kept an EMA")
    args = p.parse_args(argv)
    return exit_code(lambda: export_checkpoint(args.checkpoint, args.out, force=args.force, use_ema=not args.no_ema))


if __name__ == "__main__":
    sys.exit(main())
