"""``honestface make-test-models``: every random-weight model file in the ComfyUI ``models/`` layout.

The files have the exact on-disk formats and names the real loaders read, so graphs can be wired and the
loading code tested before (or without) the real weights. Their outputs are meaningless.
"""

from __future__ import annotations

import os
from pathlib import Path

from honestface_core.errors import HonestFaceError
from honestface_core.files.model_paths import MODEL_FILES

README_NAME = "RANDOM_WEIGHTS_README.txt"
README_TEXT = """\
Every model file in this folder was written by `honestface make-test-models`.
They contain RANDOM WEIGHTS, for wiring ComfyUI graphs and for tests only.
Their detections, landmarks, embeddings and restorations are meaningless.
Do not mix them with real model files: put real weights in your own models/ folder
(`honestface check --models DIR` lists every file and where it belongs).
"""


def write_test_models(models_dir: str | os.PathLike) -> list[Path]:
    """Write all random-weight test files under ``models_dir`` (a ComfyUI-style ``models/`` folder).

    Returns the written paths (the README last). Refuses a folder that already holds any model file.
    """
    from honestface_core.testing.facexlib_files import write_facexlib_test_models
    from honestface_core.testing.honestface_files import write_honestface_test_models
    from honestface_core.testing.insightface_packs import write_insightface_test_models

    models_dir = Path(models_dir)
    existing = [str(m.path(models_dir)) for m in MODEL_FILES if m.path(models_dir).exists()]
    if existing or (models_dir / README_NAME).exists():
        shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        raise HonestFaceError(f"models folder '{models_dir}'", f"already holds model files ({shown or README_NAME})",
                              "Write test models into a new, empty folder; real weights are never overwritten or mixed "
                              "with random ones")
    models_dir.mkdir(parents=True, exist_ok=True)
    written = list(write_facexlib_test_models(models_dir))
    written += write_insightface_test_models(models_dir)
    written += write_honestface_test_models(models_dir)
    readme = models_dir / README_NAME
    readme.write_text(README_TEXT)
    return written + [readme]
