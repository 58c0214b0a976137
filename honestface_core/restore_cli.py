"""``honestface restore``: detect, align, restore and paste back the faces of image files.

Writes one new PNG per input into ``--out``; never overwrites an input or an existing file (a free name is
chosen: ``<stem>_honestface.png``, ``<stem>_honestface_1.png``, ...).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from .errors import HonestFaceError
from .model_paths import default_models_dir


DETECTORS = ("auto", "insightface", "retinaface", "yunet")
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
    p.add_argument("--detector", default="auto", choices=DETECTORS,
                   help="face detector (auto: insightface pack, else facexlib RetinaFace, else OpenCV YuNet)")
    p.add_argument("--color", default="none", choices=("none", "adain", "wavelet"),
                   help="colour correction of restored faces toward the input")
    p.add_argument("--top-k", type=int, default=0, help="keep only the K references most similar to the first face (0 = all)")
    p.add_argument("--chunk-size", type=int, default=None, help="faces per UNet batch (default: all; halves on OOM)")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------------


def build_detector(models_dir: Path, kind: str, device):
    """A face detector from ``models_dir`` (``auto``: insightface pack, else facexlib RetinaFace, else YuNet)."""
    from .detection import InsightFaceDetector, RetinaFaceDetector, YuNetDetector
    from .insightface_models import INSIGHTFACE_PACKS, load_face_analysis, pack_folder
    from .model_paths import find_model_file_or_bundled

    if kind == "auto":
        for pack, files in INSIGHTFACE_PACKS.items():
            if (pack_folder(models_dir, pack) / files[0]).is_file():
                kind = f"insightface:{pack}"
                break
        else:
            kind = "retinaface" if (models_dir / "facexlib" / "detection_Resnet50_Final.pth").is_file() else "yunet"
    if kind.startswith("insightface"):
        pack = kind.split(":", 1)[1] if ":" in kind else next(
            (p for p, f in INSIGHTFACE_PACKS.items() if (pack_folder(models_dir, p) / f[0]).is_file()), "antelopev2")
        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else []
        app = load_face_analysis(models_dir, pack, providers + ["CPUExecutionProvider"], allowed_modules=("detection",))
        return InsightFaceDetector(app)
    if kind == "retinaface":
        return RetinaFaceDetector.from_models_dir(models_dir, device=device)
    return YuNetDetector(find_model_file_or_bundled(models_dir, "facedetection", "face_detection_yunet_2023mar.onnx"))


def load_references(paths: list[str], detector, encoder, target_embedding=None, top_k: int = 0):
    """A :class:`ReferenceSet` from an identity-set file, a folder, or image files."""
    from .images import load_image
    from .references import load_identity_set, prepare_references, read_reference_folder

    if len(paths) == 1 and paths[0].lower().endswith(".safetensors"):
        return load_identity_set(paths[0])
    images = []
    for p in map(Path, paths):
        if p.is_dir():
            images += read_reference_folder(p)
        else:
            images.append((p.name, load_image(p)))
    return prepare_references(images, detector, encoder, target_embedding, top_k)


def unique_output_path(out_dir: Path, source: Path, taken: set[Path]) -> Path:
    """``out_dir/<stem>_honestface.png`` or the first free ``..._N.png`` (never an existing file or an input)."""
    n = 0
    while True:
        name = f"{source.stem}{SUFFIX}{'' if n == 0 else f'_{n}'}.png"
        path = (out_dir / name).resolve()
        if not path.exists() and path not in taken:
            return path
        n += 1


def write_png_new(path: Path, rgb) -> None:
    """Write a PNG to ``path``, failing instead of replacing a file that appeared in the meantime."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    with open(path, "xb") as f:
        f.write(buf.getvalue())


def run(args: argparse.Namespace) -> int:
    import torch

    from .images import load_image, tensor_to_uint8, uint8_to_tensor
    from .pipeline import BackboneIdentityEncoder, load_restorer, resolve_device, restore_images

    if args.blind and args.refs:
        raise HonestFaceError("--blind and --refs", "were both given", "Use --refs for reference-based restoration or --blind")
    if not args.blind and not args.refs:
        raise HonestFaceError("--refs", "is missing", "Give a folder or photos of the person with --refs, or pass --blind")
    inputs = [Path(p) for p in args.images]
    for p in inputs:
        if not p.is_file():
            raise HonestFaceError(f"input image '{p}'", "does not exist or is not a file", "Check the path")
    models_dir, out_dir = Path(args.models), Path(args.out)
    device = resolve_device(args.device)
    model = load_restorer(models_dir, device, args.dtype, bundle=args.model, base=args.base)
    detector = build_detector(models_dir, args.detector, device)
    refs = None
    if args.refs:
        target = None
        if args.top_k > 0:  # rank references by similarity to the first input's largest face
            from .alignment import align_faces
            from .detection import detect_faces

            first = uint8_to_tensor(load_image(inputs[0])).to(model.device)
            faces = detect_faces(detector, first, "largest")
            if faces:
                target = BackboneIdentityEncoder(model).embed(align_faces(first, faces).crops)
        refs = load_references(args.refs, detector, BackboneIdentityEncoder(model), target, args.top_k)
        for line in refs.status:
            print(f"reference {line}")
    out_dir.mkdir(parents=True, exist_ok=True)
    taken = {p.resolve() for p in inputs}
    for src in inputs:
        image = uint8_to_tensor(load_image(src))
        with torch.inference_mode():
            result = restore_images(model, image, detector, refs, args.faces, color_correction=args.color,
                                    chunk_size=args.chunk_size)
        dest = unique_output_path(out_dir, src, taken)
        write_png_new(dest, tensor_to_uint8(result.images)[0])
        taken.add(dest)
        note = "; ".join(result.messages)
        print(f"{src} -> {dest} ({len(result.faces)} face(s) restored{', ' + note if note else ''})")
    return 0


__all__ = ["add_parser", "build_detector", "load_references", "unique_output_path", "run"]
