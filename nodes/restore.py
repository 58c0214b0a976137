"""HonestFace model loader and one-step restore nodes (crops, and the all-in-one detect -> restore -> paste back)."""

from __future__ import annotations

from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch

from honestface_core.devices import DTYPES
from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.face.detection import GENDERS
from honestface_core.face.identity_library import DEFAULT_THRESHOLD, UNMATCHED
from honestface_core.files.images import as_rgb_batch
from honestface_core.files.model_paths import MODEL_FILES
from honestface_core.model.loading import OSDFACE as CORE_OSDFACE, load_restorer
from honestface_core.metrics.honesty import report_restore_result
from honestface_core.metrics.input_consistency import honesty_map_images
from honestface_core.pipeline import BackboneIdentityEncoder, restore_crops, restore_images

from .declare import field, node
from .model_folders import check_choices, comfy_models
from .result_text import ui_text
from .types import (COLOR_CORRECTIONS, FACEXLIB_HELPER, FACEXLIB_TOOLTIP, INSIGHTFACE_INPUT, LANDMARKS, LIBRARY,
                    MASK_INPUT, OPENCV_INPUT, REFS, pick_detector, pick_encoder)

MODEL = "HONESTFACE_MODEL"
OSDFACE = "osdface (OSDFace's blind weights in honestface/osdface/)"
OSDFACE_FOLDER = "honestface/osdface"
BUNDLE = "honestface.safetensors"
BASE_FOLDER = "stable-diffusion-2-1-base"
BASE_CHECKPOINT = next(m.filename for m in MODEL_FILES if m.folder == "checkpoints")
PRECISIONS = ["auto", "fp16", "bf16", "fp32"]  # a list: ComfyUI checks list choices
COMPILE_CHOICES = ["off", "on"]
MODEL_INPUT = field(MODEL, "From HonestFace Model Loader.")
REFS_INPUT = field(REFS, "The person's references (HonestFace Load References / Load Identity Set). Leave unconnected "
                   "to restore blind.")
CHUNK_INPUT = field("INT", "Faces per UNet batch; 0 = all faces in one batch (fastest). Halved automatically when the "
                    "GPU runs out of memory.", default=0, min=0, max=256)


class HonestFaceModule(torch.nn.Module):
    """Holds the model for ComfyUI's ModelPatcher, which keeps a plain ``device`` attribute on what it manages."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.honestface = model
        self.device = device


def osdface_folder() -> Path | None:
    """The first ``honestface/osdface`` folder holding OSDFace's three files, if any."""
    return comfy_models().find_dir("honestface", CORE_OSDFACE, [m.filename for m in MODEL_FILES if m.folder == OSDFACE_FOLDER])


def bundle_choices() -> list[str]:
    """Bundles found in models/honestface (the default name first), then OSDFace's weights when all three files
    are there. Only what exists is listed, so the frontend can flag a workflow's missing file."""
    files = {f for f in folder_paths.get_filename_list("honestface") if f.endswith(".safetensors") and "/" not in
             f.replace("\\", "/")}
    return sorted(files, key=lambda f: (f != BUNDLE, f)) + [OSDFACE] * (osdface_folder() is not None)


def base_choices() -> list[str]:
    """SD-2.1-base sources found: diffusers folders (``diffusers/<name>`` with unet/ and vae/), then single-file
    checkpoints; the SD-2.1-base names first."""
    folders = set()
    for root in folder_paths.get_folder_paths("diffusers"):
        if Path(root).is_dir():
            folders.update(d.name for d in Path(root).iterdir() if (d / "unet").is_dir() and (d / "vae").is_dir())
    ckpts = set(folder_paths.get_filename_list("checkpoints"))
    return ([f"diffusers/{n}" for n in sorted(folders, key=lambda n: (n != BASE_FOLDER, n))]
            + [f"checkpoints/{n}" for n in sorted(ckpts, key=lambda n: (n != BASE_CHECKPOINT, n))])


def base_path(choice: str) -> Path:
    """The folder or file of a :func:`base_choices` entry."""
    kind, _, name = choice.partition("/")
    if kind != "diffusers":
        return comfy_models().find("checkpoints", name)
    found = comfy_models().find_dir("diffusers", name, ["unet", "vae"])
    if found is None:
        raise MissingModelError(name, " or ".join(folder_paths.get_folder_paths("diffusers")),
                                "a local SD-2.1-base diffusers folder (unet/, vae/)")
    return found


def precision_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "auto":
        if mm.should_use_bf16(device):
            return torch.bfloat16
        return torch.float16 if mm.should_use_fp16(device) else torch.float32
    return DTYPES[choice]


def loaded_model(patcher):
    """Let ComfyUI put the model on its device (offloading others as needed) and return the HonestFaceModel."""
    mm.load_models_gpu([patcher])
    model = patcher.model.honestface
    return model.to(patcher.load_device)  # tensors outside parameter-holding leaf modules (buffers) follow too


@node("HonestFaceModelLoader", "HonestFace Model Loader", "HonestFace/loaders", "load",
      "Loads a HonestFace model: the trained bundle from models/honestface (or OSDFace's blind weights from "
      "models/honestface/osdface) on top of the Stable Diffusion 2.1-base UNet + VAE, from a diffusers folder in "
      "models/diffusers or a single-file checkpoint in models/checkpoints. The face backbone (the insightface ArcFace "
      "recogniser the bundle names, e.g. buffalo_l/w600k_r50.onnx) is needed to restore with references. ComfyUI's "
      "memory manager loads and offloads the model.",
      required={
          "model": field(bundle_choices, "HonestFace bundle (.safetensors) in models/honestface, or OSDFace's three "
                         "files in models/honestface/osdface (blind only); only files found are listed."),
          "base": field(base_choices, "SD-2.1-base: a diffusers folder (models/diffusers/<name> with unet/ and vae/) "
                        "or a single-file checkpoint (models/checkpoints). No text encoder is used."),
          "precision": field(PRECISIONS, "Weights' precision; 'auto' picks bf16 or fp16 where the GPU supports it and "
                             "fp32 on CPU.", default="auto"),
      },
      optional={
          "compile": field(COMPILE_CHOICES, "torch.compile the UNet and VAE: later restores run faster, but the first "
                           "restore at each new face count compiles first (slow; see docs/restore.md). Off by default.",
                           default="off"),
      },
      outputs=[(MODEL, "honestface_model", "The HonestFace restorer (VRE, embedders, fusion, UNet with the LoRA "
                "merged, VAE).")])
class HonestFaceModelLoader:
    @classmethod
    def VALIDATE_INPUTS(cls, model: str, base: str):
        osd = model == OSDFACE
        bundle = next(m for m in MODEL_FILES if m.folder == (OSDFACE_FOLDER if osd else "honestface"))
        kind, _, name = base.partition("/")
        sd = next((m for m in MODEL_FILES if m.folder.split("/")[0] == kind), None)
        return check_choices(
            ("model", model, bundle_choices(), "OSDFace's three files" if osd else model, bundle.folder, bundle.source),
            ("base", base, base_choices(), f"{name}/ (with unet/ and vae/)" if kind == "diffusers" else name, kind,
             sd.source if sd else "a Stable Diffusion 2.1-base diffusers folder or single-file checkpoint"))

    def load(self, model: str, base: str, precision: str, compile: str = "off"):
        device, offload = mm.get_torch_device(), mm.unet_offload_device()
        net = load_restorer(comfy_models(), offload, precision_dtype(precision, device),
                            bundle=CORE_OSDFACE if model == OSDFACE else model, base=base_path(base),
                            compile_modules=compile == "on")
        patcher = comfy.model_patcher.ModelPatcher(HonestFaceModule(net, offload), load_device=device,
                                                   offload_device=offload, size=mm.module_size(net))
        return (patcher,)


def _progress_bar(total: int):
    bar = comfy.utils.ProgressBar(total)
    return lambda done, n: bar.update_absolute(done, n)


@node("HonestFaceRestoreCrops", "HonestFace Restore Crops", "HonestFace/restore", "restore",
      "Restores aligned face crops (from HonestFace Detect Faces) in one step: all faces go through the UNet as one "
      "batch. With references the restored faces keep the person's identity; without them the model restores blind. "
      "Paste the result back with HonestFace Paste Faces Back.",
      required={
          "honestface_model": MODEL_INPUT,
          "crops": field("IMAGE", "Aligned face crops (FFHQ template, 512x512 is native; other sizes are resized to "
                         "512 and back)."),
          "chunk_size": CHUNK_INPUT,
      },
      optional={"references": REFS_INPUT},
      outputs=[("IMAGE", "restored_crops", "The restored crops, same size and order as the input crops.")])
class HonestFaceRestoreCrops:
    def restore(self, honestface_model, crops, chunk_size: int, references=None):
        if len(crops) == 0:
            return (crops,)
        crops = as_rgb_batch(crops, "crops")
        model = loaded_model(honestface_model)
        out = restore_crops(model, crops, references, chunk_size or None, progress=_progress_bar(len(crops)),
                            interrupt=mm.throw_exception_if_processing_interrupted)
        return (out.to(mm.intermediate_device()),)


@node("HonestFaceRestoreFaces", "HonestFace Restore Faces", "HonestFace/restore", "restore",
      "All in one: finds the faces, aligns them, restores them in one UNet batch and pastes them back with a soft mask "
      "(the face parser's if the facexlib input has one, else feathered). Connect references for identity-preserving "
      "restoration, or leave them out to restore blind. Images without a face pass through unchanged. Connect exactly "
      "one detector: insightface, facexlib or OpenCV.",
      required={
          "honestface_model": MODEL_INPUT,
          "image": field("IMAGE", "Images whose faces are restored (any batch size)."),
          "faces": field("STRING", "Which faces of each image: 'all', 'largest', or face numbers such as '0' or '0,2' "
                         "(left to right from 0 in each image).", default="all"),
          "mask": MASK_INPUT,
          "color_correction": field(COLOR_CORRECTIONS, "Match the restored face's colours to the original: 'adain' "
                                    "(mean/std per channel) or 'wavelet' (low frequencies)."),
          "chunk_size": CHUNK_INPUT,
      },
      optional={
          "references": REFS_INPUT,
          "insightface": INSIGHTFACE_INPUT,
          "facexlib": field(FACEXLIB_HELPER, FACEXLIB_TOOLTIP + " Its parser, if any, makes the paste mask."),
          "opencv": OPENCV_INPUT,
          "strength": field("FLOAT", "How much of each restored face replaces the original: 0 = the input unchanged, "
                            "1 = the restored face (the paste mask is scaled by it).", default=1.0, min=0.0, max=1.0,
                            step=0.05),
          "min_face_size": field("INT", "Skip faces whose detection box's shorter side is smaller than this many "
                                 "pixels (0 = restore every face). Applied before 'faces'.", default=0, min=0, max=8192),
          "gender": field(GENDERS, "Restore only faces of this gender: needs the insightface detector with a pack "
                          "that has genderage.onnx. Applied before 'faces'.", default="any"),
          "identity_library": field(LIBRARY, "Group photos: several people's references (HonestFace Identity "
                                    "Library). Each face is matched to the closest person and restored with their "
                                    "references; connect this or 'references', not both."),
          "unmatched": field(list(UNMATCHED), "With an identity library: what happens to a face that matches nobody - "
                             "restored blind, or left untouched (skip).", default="blind"),
          "identity_threshold": field("FLOAT", "With an identity library: the lowest identity similarity (cosine) "
                                      "that counts as a match (our default 0.3, see docs/restore.md).",
                                      default=DEFAULT_THRESHOLD, min=-1.0, max=1.0, step=0.01),
          "honesty_report": field(["on", "off"], "Per-face honesty report: Ref-Deg against the person's references, "
                                  "identity and consistency with the input, landmark drift, and a map of where the "
                                  "restored face departs from what the input supports (docs/honesty.md).", default="on"),
          "landmark_model": field(LANDMARKS, "Landmark detector for the report's landmark drift (HonestFace Landmark "
                                  "Model Loader); without it the report says 'n/a'."),
      },
      outputs=[("IMAGE", "image", "The images with the restored faces pasted back (same size as the input)."),
               ("IMAGE", "restored_crops", "The restored face crops (one per face)."),
               ("STRING", "info", "What was done: faces per image, references used, images without a face, who is "
                "who with an identity library."),
               ("MASK", "mask", "Where the restored faces were pasted, with the weight each pixel got (0 = input "
                "pixel unchanged); for downstream nodes such as inpainting or compositing."),
               ("IMAGE", "honesty_maps", "Per face: the restored crop with red where it departs from what the input "
                "supports (empty when the report is off)."),
               ("STRING", "report", "One honesty line per face (docs/honesty.md).")])
class HonestFaceRestoreFaces:
    def restore(self, honestface_model, image, faces: str, mask: str, color_correction: str, chunk_size: int,
                references=None, insightface=None, facexlib=None, opencv=None, strength: float = 1.0,
                min_face_size: int = 0, gender: str = "any", identity_library=None, unmatched: str = "blind",
                identity_threshold: float = DEFAULT_THRESHOLD, honesty_report: str = "on", landmark_model=None):
        node = "HonestFace Restore Faces"
        images = as_rgb_batch(image, "image")
        parser = getattr(facexlib, "parser", None)
        if mask == "parsing" and parser is None:
            raise HonestFaceError(f"{node}: mask", "'parsing' needs a face parser",
                                  "Connect a HonestFace facexlib loader with a parser, or choose 'feathered'")
        if references is not None and identity_library is not None:
            raise HonestFaceError(f"{node}: references", "and identity_library are both connected",
                                  "Connect one person's references, or an identity library for group photos")
        detector = pick_detector(node, insightface=insightface, facexlib=facexlib, opencv=opencv)
        # the connected insightface / SFace recogniser matches people and scores the report, else the model's backbone
        encoder = None
        if insightface is not None or getattr(opencv, "encoder", None) is not None:
            encoder = pick_encoder(node, insightface=insightface, opencv=opencv)
        model = loaded_model(honestface_model)
        bar = comfy.utils.ProgressBar(1)
        result = restore_images(model, images, detector, identity_library or references, faces,
                                parser=None if mask == "feathered" else parser, color_correction=color_correction,
                                chunk_size=chunk_size or None, progress=lambda done, n: bar.update_absolute(done, n),
                                interrupt=mm.throw_exception_if_processing_interrupted, strength=strength,
                                min_face_size=min_face_size, gender=gender, unmatched=unmatched,
                                identity_encoder=encoder, identity_threshold=identity_threshold)
        counts = torch.bincount(result.faces.image_index.cpu(), minlength=images.shape[0]).tolist()
        used = (f"identity library of {len(identity_library)}" if identity_library is not None
                else f"{len(references)} reference(s)" if references is not None and len(references) else "blind")
        info = [f"restored {len(result.faces)} face(s) ({', '.join(map(str, counts))} per image), {used}"]
        info += [m.describe() for m in result.identities] + result.messages
        maps, report = honesty_outputs(result, model, encoder, landmark_model) if honesty_report == "on" else (
            result.restored[:0], "honesty report: off")
        out_device = mm.intermediate_device()
        text = "\n".join(info)
        return {"ui": ui_text(text + "\n" + report), "result": (
            result.images.to(out_device), result.restored.to(out_device), text, result.mask.to(out_device),
            maps.to(out_device), report)}


def honesty_outputs(result, model, encoder, landmarks) -> tuple[torch.Tensor, str]:
    """Restore Faces' honesty maps and report lines (with the model's own backbone when no recogniser is connected)."""
    if encoder is None and model.backbone is None:
        return result.restored[:0], ("honesty report: n/a (no identity encoder: connect insightface, or OpenCV with "
                                     "its SFace recognizer)")
    report = report_restore_result(result, encoder or BackboneIdentityEncoder(model), landmarks)
    maps = honesty_map_images(result.restored, report.maps) if len(report.faces) else result.restored[:0]
    return maps, "\n".join(report.lines)

