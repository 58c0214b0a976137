"""Random-weight facexlib files in the exact layout of the released ones (tests, wiring graphs without real weights)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from honestface_core.files.facexlib_models import AWING_FILE, BISENET_FILE, FOLDER, PARSENET_FILE, RETINAFACE_FILES


def write_facexlib_test_models(models_dir: str | os.PathLike) -> list[Path]:
    """Write random-weight versions of all five facexlib files into ``models_dir/facexlib``.

    Same networks, key names, prefixes and wrappers as the released files, so the real loaders above run.
    The weights are random (freshly initialised networks): outputs are meaningless. Existing files are kept.
    """
    from facexlib.alignment import FAN
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing import BiSeNet, ParseNet

    folder = Path(models_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    cpu = torch.device("cpu")
    builders = {
        RETINAFACE_FILES["resnet50"]: lambda: {"module." + k: v for k, v in RetinaFace("resnet50", device=cpu).state_dict().items()},
        RETINAFACE_FILES["mobilenet0.25"]: lambda: {"module." + k: v for k, v in RetinaFace("mobile0.25", device=cpu).state_dict().items()},
        PARSENET_FILE: lambda: ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(),
        BISENET_FILE: lambda: BiSeNet(num_class=19).state_dict(),
        AWING_FILE: lambda: {"state_dict": FAN(num_modules=4, num_landmarks=98, device="cpu").state_dict()},
    }
    written = []
    for name, build in builders.items():
        path = folder / name
        if not path.exists():
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                torch.save(build(), path)
        written.append(path)
    return written
