"""Stage-2 training entry point.

    accelerate launch training/train.py --config training/configs/sd21_512.yaml --output runs/sd21
    python training/train.py --config training/configs/tiny.yaml --output runs/tiny
    python training/train.py --resume runs/tiny            # continue the newest checkpoint exactly
    # two CPU processes (gloo); accelerate's --cpu launcher would start only one
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/train.py --config ... --output ...

``--resume`` accepts a run folder (newest checkpoint) or a ``checkpoints/step_*`` folder; without ``--config``
the run's own ``config.yaml`` is used, and without ``--output`` the run folder is continued.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from honestface_core.errors import HonestFaceError, exit_code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train HonestFace (stage 2: generator + latent discriminator).")
    p.add_argument("--config", help="training YAML, e.g. training/configs/tiny.yaml")
    p.add_argument("--output", help="run folder (checkpoints/, logs/train.jsonl, samples/, config.yaml)")
    p.add_argument("--resume", help="run folder or checkpoints/step_* folder to continue exactly")
    p.add_argument("--max-steps", type=int, help="override train.max_steps")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from training.checkpoint import resolve_checkpoint
    from training.config import load_config
    from training.engine import Trainer

    args = parse_args(argv)

    def run() -> None:
        if args.resume:
            ckpt = resolve_checkpoint(args.resume)
            run_dir = ckpt.parent.parent
            output = Path(args.output) if args.output else run_dir
            cfg = load_config(args.config or run_dir / "config.yaml")
        else:
            if not args.config or not args.output:
                raise HonestFaceError("command line", "--config and --output are required for a new run",
                                      "Pass both, or --resume RUN_DIR to continue a run")
            output, ckpt = Path(args.output), None
            cfg = load_config(args.config)
        Trainer(cfg, output, resume=ckpt).train(max_steps=args.max_steps)

    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
