"""The folders of ``honestface evaluate``: restored and ground-truth images paired by file name (the stem, so
``a.png`` pairs with ``a.jpg``) and the reference images of each pair (docs/evaluation.md, "Command line")."""

from __future__ import annotations

import os
from pathlib import Path

from honestface_core.errors import HonestFaceError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(folder: str | os.PathLike, what: str) -> dict[str, Path]:
    """Image files directly in ``folder`` by stem; duplicate stems are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HonestFaceError(f"{what} folder '{folder}'", "does not exist or is not a folder", "Pass a folder of images")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            if p.stem in found:
                raise HonestFaceError(f"{what} folder '{folder}'", f"has two images named '{p.stem}' ({found[p.stem].name}, {p.name})",
                                      "Keep one file per name: images are paired by file name")
            found[p.stem] = p
    if not found:
        raise HonestFaceError(f"{what} folder '{folder}'", "contains no images", f"Put {'/'.join(sorted(IMAGE_EXTENSIONS))} files in it")
    return found


def pair_folders(restored_dir, gt_dir) -> list[tuple[str, Path, Path]]:
    """``[(name, restored_path, gt_path)]`` sorted by name; any unmatched name is an error that lists it."""
    restored, gt = list_images(restored_dir, "restored"), list_images(gt_dir, "ground-truth")
    only_r, only_g = sorted(set(restored) - set(gt)), sorted(set(gt) - set(restored))
    if only_r or only_g:
        parts = []
        if only_r:
            parts.append(f"{len(only_r)} restored image(s) have no ground truth ({', '.join(only_r[:5])}{'...' if len(only_r) > 5 else ''})")
        if only_g:
            parts.append(f"{len(only_g)} ground-truth image(s) have no restored image ({', '.join(only_g[:5])}{'...' if len(only_g) > 5 else ''})")
        raise HonestFaceError("--restored / --gt", f"{len(restored)} restored and {len(gt)} ground-truth images do not pair up: "
                              + "; ".join(parts), "Give each restored image the same file name (any extension) as its ground truth")
    return [(name, restored[name], gt[name]) for name in sorted(gt)]


def reference_paths(refs_dir: Path | None, name: str) -> list[Path] | None:
    """The references of the pair ``name``: the images in ``refs_dir/name/`` if that sub-folder exists, else those
    directly in ``refs_dir``; None without ``refs_dir``."""
    if refs_dir is None:
        return None
    sub = refs_dir / name
    folder = sub if sub.is_dir() else refs_dir
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
