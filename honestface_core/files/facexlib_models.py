"""Load facexlib networks from local files only (never facexlib's download helpers).

Released layouts (as facexlib's own ``init_*`` helpers read them):
- ``detection_Resnet50_Final.pth`` / ``detection_mobilenet0.25_Final.pth``: a plain state dict whose keys carry
  the ``module.`` prefix of a DataParallel-trained model (facexlib strips it).
- ``parsing_parsenet.pth`` / ``parsing_bisenet.pth``: a plain state dict.
- ``alignment_WFLW_4HG.pth``: ``{"state_dict": ...}``.
All files are read by :mod:`.weight_files` (``torch.load(..., weights_only=True)``). Random-weight files in
these layouts for tests: :mod:`honestface_core.testing.facexlib_files`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from honestface_core.errors import HonestFaceError
from honestface_core.files.model_paths import find_model_file
from honestface_core.files.weight_files import load_weights, read_state_dict

FOLDER = "facexlib"
RETINAFACE_FILES = {"resnet50": "detection_Resnet50_Final.pth", "mobilenet0.25": "detection_mobilenet0.25_Final.pth"}
PARSENET_FILE = "parsing_parsenet.pth"
BISENET_FILE = "parsing_bisenet.pth"
AWING_FILE = "alignment_WFLW_4HG.pth"


def _load_into(net: torch.nn.Module, path: Path, device) -> torch.nn.Module:
    what = f"facexlib's {path.name} ({type(net).__name__})"
    load_weights(net, read_state_dict(path, what), path, what)
    return net.eval().to(device)


def load_retinaface(models_dir: str | os.PathLike, network: str = "resnet50", device: str | torch.device = "cpu") -> torch.nn.Module:
    """facexlib ``RetinaFace`` (``"resnet50"`` or ``"mobilenet0.25"``) from ``models_dir/facexlib``."""
    from facexlib.detection.retinaface import RetinaFace

    network = "mobilenet0.25" if network in ("mobile0.25", "mobilenet") else network
    if network not in RETINAFACE_FILES:
        raise HonestFaceError("RetinaFace network", f"'{network}' is unknown", "Use 'resnet50' or 'mobilenet0.25'")
    path = find_model_file(models_dir, FOLDER, RETINAFACE_FILES[network])
    with warnings.catch_warnings():  # facexlib passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        net = RetinaFace(network_name="resnet50" if network == "resnet50" else "mobile0.25", half=False, device=torch.device(device))
    return _load_into(net, path, device)


def load_parsenet(models_dir: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """facexlib ``ParseNet`` (512 in / 512 out, 19 classes) from ``models_dir/facexlib``."""
    from facexlib.parsing import ParseNet

    path = find_model_file(models_dir, FOLDER, PARSENET_FILE)
    return _load_into(ParseNet(in_size=512, out_size=512, parsing_ch=19), path, device)


def load_bisenet(models_dir: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """facexlib ``BiSeNet`` (19 classes) from ``models_dir/facexlib``."""
    from facexlib.parsing import BiSeNet

    path = find_model_file(models_dir, FOLDER, BISENET_FILE)
    return _load_into(BiSeNet(num_class=19), path, device)


def load_awing(models_dir: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """facexlib AWing ``FAN`` (4 hourglasses, 98 WFLW landmarks) from ``models_dir/facexlib``."""
    from facexlib.alignment import FAN

    path = find_model_file(models_dir, FOLDER, AWING_FILE)
    return _load_into(FAN(num_modules=4, num_landmarks=98, device=str(device)), path, device)
