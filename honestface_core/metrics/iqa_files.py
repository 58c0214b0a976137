"""Weight files of the no-reference quality metrics (MUSIQ, CLIP-IQA, MANIQA): where they are looked for, how
they are read. Never downloaded.

A file is looked for, in order: the explicit path the caller gives; ``<models>/iqa/<file>`` (our choice of
folder); pyiqa's download cache ``$TORCH_HOME/hub/pyiqa/<file>`` (``~/.cache/torch/hub/pyiqa``), so a file that a
pyiqa user already has is found under the name pyiqa gives it. Files are read by :mod:`honestface_core.files.weight_files`
(safetensors or ``torch.load(weights_only=True)``: a checkpoint that needs arbitrary unpickling is refused).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from honestface_core.metrics.image_quality import MetricUnavailable

IQA_FOLDER = "iqa"


def pyiqa_cache_dir() -> Path:
    """pyiqa's download cache: ``<torch hub dir>/pyiqa``."""
    return Path(torch.hub.get_dir()) / "pyiqa"


def iqa_folders(models_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders a quality-metric weight file is looked for in: ``<models>/iqa`` (when given), pyiqa's cache."""
    return ([Path(models_dir) / IQA_FOLDER] if models_dir else []) + [pyiqa_cache_dir()]


def find_iqa_file(metric: str, filenames: Sequence[str], models_dir: str | os.PathLike | None = None,
                  path: str | os.PathLike | None = None, extra_folders: Sequence[Path] = ()) -> Path:
    """The weight file of ``metric``: ``path`` if given, else the first of ``filenames`` found in :func:`iqa_folders`,
    then in ``extra_folders`` (e.g. the caches other tools keep the file in).

    Raises:
        MetricUnavailable: nothing found; the message names the file and the folders it belongs in.
    """
    if path:
        if not Path(path).is_file():
            raise MetricUnavailable(f"{metric} skipped: weight file '{path}' not found")
        return Path(path)
    folders = iqa_folders(models_dir) + [Path(f) for f in extra_folders]
    for folder in folders:
        for name in filenames:
            if (folder / name).is_file():
                return folder / name
    where = " or ".join(f"'{f}'" for f in folders)
    also = f" (or {', '.join(filenames[1:])})" if len(filenames) > 1 else ""
    raise MetricUnavailable(f"{metric} skipped: weight file {filenames[0]}{also} missing, put it in {where}")


__all__ = ["IQA_FOLDER", "find_iqa_file", "iqa_folders", "pyiqa_cache_dir"]
