"""``honestface restore``: detect, align, restore and paste back the faces of image files.

Writes one new PNG per input into ``--out``; never overwrites an input or an existing file and never writes
through a symlink (a free name is chosen: ``<stem>_honestface.png``, ``<stem>_honestface_1.png``, ...). Options,
input images (from their headers), references and the output folder are checked before any model loads.
``--report`` adds the per-face honesty report (:mod:`honestface_core.cli.honesty_output`, docs/honesty.md).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from honestface_core.cli.honesty_output import (IDENTITY_CHOICES, add_report_arguments, report_encoder, report_landmarks,
                                                write_report)
from honestface_core.errors import HonestFaceError
from honestface_core.face.detection import GENDERS
from honestface_core.face.identity_library import DEFAULT_THRESHOLD, UNMATCHED
from honestface_core.files.model_paths import DETECTOR_KINDS, default_models_dir

SUFFIX = "_honestface"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("restore", help="restore the faces of image files (detect, align, restore, paste back)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="input image files")
    p.add_argument("--refs", nargs="+", metavar="DIR_OR_FILES",
                   help="reference photos of the person: a folder, image files, or an identity set .safetensors")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--models", default=str(default_models_dir()),
                   help="ComfyUI-style models/ folder (default: $HONESTFACE_MODELS or ./models)")
    p.add_argument("--faces", default="all", help="all | largest | face indices such as 0,2 (left to right, per image)")
    p.add_argument("--blind", action="store_true", help="restore without references")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="precision (auto: bf16/fp16 on GPU, fp32 on CPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--model", default="honestface.safetensors",
                   help="bundle file in models/honestface/, or 'osdface' for OSDFace's blind weights")
    p.add_argument("--base", default=None, help="SD-2.1-base diffusers folder or single-file checkpoint (default: "
                   "models/diffusers/stable-diffusion-2-1-base, then models/checkpoints/v2-1_512-ema-pruned.safetensors)")
    p.add_argument("--detector", default="auto", choices=DETECTOR_KINDS,
                   help="face detector (auto: insightface pack, else facexlib RetinaFace, else OpenCV YuNet)")
    p.add_argument("--color", default="none", choices=("none", "adain", "wavelet"),
                   help="colour correction of restored faces toward the input")
    p.add_argument("--top-k", type=int, default=0, help="keep only the K references most similar to the first face (0 = all)")
    p.add_argument("--chunk-size", type=int, default=None, help="faces per UNet batch (default: all; halves on OOM)")
    p.add_argument("--strength", type=float, default=1.0,
                   help="0..1: how much of each restored face replaces the original (0 = input unchanged)")
    p.add_argument("--min-face-size", type=int, default=0,
                   help="skip faces whose detection box's shorter side is below this many pixels (0 = none)")
    p.add_argument("--gender", default="any", choices=GENDERS,
                   help="restore only faces of this gender (needs an insightface pack with genderage.onnx)")
    p.add_argument("--person", nargs="+", metavar="NAME=PATH", default=None,
                   help="group photos: one person per entry, PATH an identity set .safetensors or a folder of photos; "
                   "each face is matched to the closest person and restored with their references")
    p.add_argument("--unmatched", default="blind", choices=UNMATCHED,
                   help="with --person: restore faces that match nobody blind, or skip them (left untouched)")
    p.add_argument("--identity-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"with --person: lowest identity similarity that counts as a match (default {DEFAULT_THRESHOLD})")
    p.add_argument("--match-identity", default="auto", choices=IDENTITY_CHOICES,
                   help="with --person: the encoder that matches faces to people (auto: the model's ArcFace backbone, "
                   "else SFace)")
    add_report_arguments(p)
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------------


def load_references(paths: list[str], detector, encoder, target_embedding=None, top_k: int = 0):
    """A :class:`ReferenceSet` from an identity-set file, a folder, or image files."""
    from honestface_core.files.images import load_image
    from honestface_core.face.references import load_identity_set, prepare_references, read_reference_folder

    if len(paths) == 1 and paths[0].lower().endswith(".safetensors"):
        return load_identity_set(paths[0])
    images = []
    for p in map(Path, paths):
        if p.is_dir():
            images += read_reference_folder(p)
        else:
            images.append((p.name, load_image(p)))
    return prepare_references(images, detector, encoder, target_embedding, top_k)


def parse_person(entry: str) -> tuple[str, Path]:
    """``NAME=PATH`` of ``--person``."""
    name, sep, path = entry.partition("=")
    if not sep or not name.strip() or not path:
        raise HonestFaceError(f"--person '{entry}'", "is not NAME=PATH", "Write e.g. --person anna=refs/anna.safetensors")
    return name.strip(), Path(path)


def check_arguments(args: argparse.Namespace):
    """Every cheap check of the command line, before any model loads: options, input image headers (exist,
    readable, within the size limits), reference paths, and the output folder (a writable folder, created here).

    Returns:
        ``(inputs, out_dir, device, people)``, ``people`` the ``--person`` entries as ``{name: path}``.
    """
    from honestface_core.face.detection import parse_selection
    from honestface_core.files.images import read_image_size
    from honestface_core.files.outputs import prepare_output_dir
    from honestface_core.devices import resolve_device

    if sum(map(bool, (args.blind, args.refs, args.person))) > 1:
        raise HonestFaceError("--blind, --refs and --person", "were given together",
                              "Use --refs for one person, --person NAME=PATH ... for a group photo, or --blind")
    if not (args.blind or args.refs or args.person):
        raise HonestFaceError("--refs", "is missing", "Give a folder or photos of the person with --refs, or pass --blind")
    if not 0.0 <= args.strength <= 1.0:
        raise HonestFaceError("--strength", f"{args.strength} is outside 0..1", "Use 0 (input unchanged) to 1")
    if args.min_face_size < 0:
        raise HonestFaceError("--min-face-size", f"{args.min_face_size} is negative", "Use 0 (no filter) or pixels")
    if not -1.0 <= args.identity_threshold <= 1.0:
        raise HonestFaceError("--identity-threshold", f"{args.identity_threshold} is outside -1..1",
                              f"Use e.g. {DEFAULT_THRESHOLD}")
    people = dict(parse_person(entry) for entry in args.person or [])
    if args.person and len(people) != len(args.person):
        raise HonestFaceError("--person", "names a person twice", "Give each person once")
    try:
        parse_selection(args.faces)
    except HonestFaceError as err:
        raise HonestFaceError(f"--faces '{args.faces}'", "is not understood", err.fix) from err
    if args.top_k < 0:
        raise HonestFaceError("--top-k", f"{args.top_k} is negative", "Use 0 (all references) or a positive count")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise HonestFaceError("--chunk-size", f"{args.chunk_size} is not a positive number", "Use 1 or more, or leave it out")
    device = resolve_device(args.device, "--device")
    inputs = [Path(p) for p in args.images]
    for p in inputs:
        read_image_size(p)
    for p in [*map(Path, args.refs or []), *people.values()]:
        if not p.exists():
            raise HonestFaceError(f"--refs '{p}'", "does not exist",
                                  "Give a folder of photos, photo files or an identity set .safetensors")
        if p.is_file() and p.suffix.lower() != ".safetensors":
            read_image_size(p)
    return inputs, prepare_output_dir(args.out, "--out"), device, people


def encode_png(rgb) -> bytes:
    """PNG bytes of a ``(H, W, 3)`` uint8 array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    import torch

    from honestface_core.face.detection import build_detector
    from honestface_core.face.identity import embed_largest_faces
    from honestface_core.files.images import load_image, tensor_to_uint8, uint8_to_tensor
    from honestface_core.files.outputs import write_unique_file
    from honestface_core.metrics.honesty import report_restore_result
    from honestface_core.model.loading import load_restorer
    from honestface_core.pipeline import BackboneIdentityEncoder, restore_images

    inputs, out_dir, device, people = check_arguments(args)
    models_dir = Path(args.models)
    encoder = landmarks = None
    if args.report:  # the report's own models first: a missing file fails before the restorer loads
        landmarks = report_landmarks(args.report_landmarks, models_dir, device)
        encoder = report_encoder("sface", models_dir) if args.report_identity == "sface" else None
    model = load_restorer(models_dir, device, args.dtype, bundle=args.model, base=args.base)
    if args.report and encoder is None:
        encoder = report_encoder(args.report_identity, models_dir, model)
    detector = build_detector(models_dir, args.detector, device)
    refs = None
    if args.refs:
        target = None
        if args.top_k > 0:  # rank references by similarity to the first input's largest face
            first = uint8_to_tensor(load_image(inputs[0])).to(model.device)
            target = embed_largest_faces(first, detector, BackboneIdentityEncoder(model)).embeddings
            target = target if len(target) else None
        refs = load_references(args.refs, detector, BackboneIdentityEncoder(model), target, args.top_k)
        for line in refs.status:
            print(f"reference {line}")
    matcher = None
    if people:
        from honestface_core.face.identity_library import IdentityLibrary

        sets = [load_references([str(path)], detector, BackboneIdentityEncoder(model)) for path in people.values()]
        refs = IdentityLibrary(list(people), sets)
        matcher = report_encoder(args.match_identity, models_dir, model)
        for name, person in zip(refs.names, refs.sets):
            print(f"person {name}: {len(person)} reference(s)")
    for src in inputs:
        image = uint8_to_tensor(load_image(src))
        with torch.inference_mode():
            result = restore_images(model, image, detector, refs, args.faces, color_correction=args.color,
                                    chunk_size=args.chunk_size, image_names=[f"image '{src}'"], strength=args.strength,
                                    min_face_size=args.min_face_size, gender=args.gender, unmatched=args.unmatched,
                                    identity_encoder=matcher, identity_threshold=args.identity_threshold)
        dest = write_unique_file(out_dir, f"{src.stem}{SUFFIX}", ".png", encode_png(tensor_to_uint8(result.images)[0]))
        note = "; ".join(result.messages)
        print(f"{src} -> {dest} ({len(result.faces)} face(s) restored{', ' + note if note else ''})")
        for match in result.identities:
            print(f"  {match.describe()}")
        if args.report:
            with torch.inference_mode():
                report = report_restore_result(result, encoder, landmarks)
            path, _ = write_report(out_dir, dest.stem, src, dest, report, result.restored, result.identities)
            for line in report.lines:
                print(f"  {line}")
            print(f"  honesty report -> {path}")
    return 0


__all__ = ["add_parser", "check_arguments", "load_references", "run"]
