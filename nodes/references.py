"""Reference nodes: build a reference set from an IMAGE batch and/or a folder under ComfyUI's input directory;
save and load it as an identity set (.safetensors)."""

from __future__ import annotations

import os
from pathlib import Path

import comfy.model_management as mm
import folder_paths

from honestface_core.errors import HonestFaceError
from honestface_core.face.identity import embed_largest_faces
from honestface_core.files.images import as_rgb_batch, tensor_to_uint8
from honestface_core.face.references import (MIN_CROP_SIZE, check_relative_name, load_identity_set, prepare_references,
                                        read_reference_folder, resolve_reference_folder, save_identity_set)

from .declare import field, node
from .result_text import ui_text
from .types import INSIGHTFACE_INPUT, OPENCV_SFACE_INPUT, REFS, pick_detector, pick_encoder

NODE = "Load References"
INPUT_PREFIX = "input/"


@node("HonestFaceLoadReferences", "HonestFace Load References", "HonestFace/references", "load",
      "Builds the reference set of one person from photos: an IMAGE batch and/or every image in a folder inside "
      "ComfyUI's input directory. The largest face of each photo is aligned and embedded; photos without a face are "
      "skipped and listed in the status. With a target image and top_k > 0, only the K references most similar to "
      "the target's face are kept.",
      required={
          "folder": field("STRING", "Folder inside ComfyUI's input directory with photos of the person (e.g. "
                          "'refs/alice'); leave empty to use only 'images'.", default=""),
          "top_k": field("INT", "Keep only the K references most similar to the target's face (needs 'target'); 0 "
                         "keeps all.", default=0, min=0, max=64),
          "crop_size": field("INT", "Side of the aligned reference crops (HonestFace uses 512).",
                             default=512, min=MIN_CROP_SIZE, max=2048, step=8),
      },
      optional={
          "images": field("IMAGE", "Reference photos of the person (a batch)."),
          "target": field("IMAGE", "The image to restore; its largest face ranks the references for top_k."),
          "insightface": INSIGHTFACE_INPUT,
          "opencv": OPENCV_SFACE_INPUT,
      },
      outputs=[(REFS, "references", "Aligned crops, identity embeddings and per-reference status."),
               ("IMAGE", "preview", "The aligned crops of the kept references."),
               ("STRING", "status", "One line per input photo: kept or skipped, and why.")])
class LoadReferences:
    @classmethod
    def IS_CHANGED(cls, folder: str = "", **_):
        """Re-run when the folder's files change (ComfyUI would otherwise reuse the cached result)."""
        if not str(folder).strip():
            return ""
        try:
            path = resolve_reference_folder(folder_paths.get_input_directory(), folder)
        except HonestFaceError:
            return float("nan")  # let load() report the problem
        return str(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir() if p.is_file()))

    def load(self, folder: str, top_k: int, crop_size: int, images=None, target=None, insightface=None, opencv=None):
        input_dir = folder_paths.get_input_directory()
        folder_path = resolve_reference_folder(input_dir, folder) if str(folder).strip() else None  # checked first
        detector = pick_detector(NODE, insightface=insightface, opencv=opencv)
        encoder = pick_encoder(NODE, insightface=insightface, opencv=opencv)
        photos = []
        if images is not None:
            photos += [(f"image {i}", a) for i, a in enumerate(tensor_to_uint8(as_rgb_batch(images, "images")))]
        if folder_path is not None:
            photos += read_reference_folder(folder_path, within=input_dir)
        if not photos:
            raise HonestFaceError(f"{NODE}: images / folder", "no reference photos were given",
                                  "Connect an IMAGE batch of the person, or type a folder name inside the input directory")
        target_embedding = None
        if target is not None and top_k > 0:
            target_embedding = embed_largest_faces(as_rgb_batch(target, "target"), detector, encoder, crop_size,
                                                   interrupt=mm.throw_exception_if_processing_interrupted).embeddings
            if not len(target_embedding):
                raise HonestFaceError(f"{NODE}: target", "no face was found in the target image",
                                      "Connect an image with a visible face, or set top_k to 0")
        mm.throw_exception_if_processing_interrupted()
        refs = prepare_references(photos, detector, encoder, target_embedding, top_k, crop_size)
        status = "\n".join(refs.status)
        return {"ui": ui_text(status), "result": (refs, refs.crops, status)}


def unused_path(directory: Path, stem: str, counter: int) -> Path:
    """First ``<stem>_NNNNN_.safetensors`` in ``directory`` that does not exist (never overwrite)."""
    while os.path.lexists(directory / f"{stem}_{counter:05}_.safetensors"):  # a dangling link counts as taken
        counter += 1
    return directory / f"{stem}_{counter:05}_.safetensors"


@node("HonestFaceSaveIdentitySet", "HonestFace Save Identity Set", "HonestFace/references", "save",
      "Saves a reference set (aligned crops, embeddings, status) as a .safetensors identity set in ComfyUI's output "
      "directory. Existing files are never overwritten: a new number is used. Move the file to models/honestface (or "
      "the input directory) to load it later.",
      required={
          "references": field(REFS, "Reference set from Load References."),
          "filename_prefix": field("STRING", "File name prefix inside the output directory (may contain a folder).",
                                   default="honestface/identity"),
      },
      output_node=True)
class SaveIdentitySet:
    def save(self, references, filename_prefix: str):
        out_dir = folder_paths.get_output_directory()
        check_relative_name(filename_prefix, "Save Identity Set: filename_prefix", f"the output directory '{out_dir}'")
        full_dir, stem, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
        path = save_identity_set(references, unused_path(Path(full_dir), stem, counter))
        rel = os.path.relpath(path, out_dir)
        return {"ui": ui_text(f"saved {len(references)} references to output/{rel}")}


def identity_set_files() -> list[str]:
    """.safetensors files in models/honestface (subfolders too), then those in the input directory as 'input/...'."""
    files = [f for f in folder_paths.get_filename_list("honestface") if f.lower().endswith(".safetensors")]
    input_dir = Path(folder_paths.get_input_directory())
    if input_dir.is_dir():
        files += sorted(INPUT_PREFIX + p.relative_to(input_dir).as_posix() for p in input_dir.rglob("*.safetensors"))
    return files


def identity_set_path(name: str) -> Path:
    """Full path of a Load Identity Set choice (``input/...`` or a file in models/honestface); the name is checked
    first, since a workflow file can hold any text."""
    check_relative_name(name, "Load Identity Set: identity_set", "models/honestface or the input directory")
    if name.startswith(INPUT_PREFIX):
        input_dir = Path(folder_paths.get_input_directory()).resolve()
        path = (input_dir / name[len(INPUT_PREFIX):]).resolve()
        if not path.is_relative_to(input_dir):
            raise HonestFaceError(f"identity set '{name}'", "is outside the input directory", "Pick a file from the list")
        return path
    full = folder_paths.get_full_path("honestface", name)
    if full is None:
        raise HonestFaceError(f"identity set '{name}'", "was not found in models/honestface",
                              "Put the .safetensors file in models/honestface or the input directory")
    return Path(full)


@node("HonestFaceLoadIdentitySet", "HonestFace Load Identity Set", "HonestFace/references", "load",
      "Loads an identity set saved by Save Identity Set (or the honestface CLI) from models/honestface or the input "
      "directory, instead of re-detecting and re-embedding the reference photos.",
      required={"identity_set": field(identity_set_files, "Identity set file: in models/honestface, or 'input/...' "
                                      "for the input directory.")},
      outputs=[(REFS, "references", "The stored reference set."), ("IMAGE", "preview", "Its aligned crops."),
               ("STRING", "status", "Its per-reference status lines.")])
class LoadIdentitySet:
    @classmethod
    def IS_CHANGED(cls, identity_set: str):
        try:
            path = identity_set_path(identity_set)
        except HonestFaceError:
            return float("nan")  # let load() report the problem
        return path.stat().st_mtime if path.exists() else float("nan")

    def load(self, identity_set: str):
        refs = load_identity_set(identity_set_path(identity_set))
        status = "\n".join(refs.status)
        return {"ui": ui_text(status), "result": (refs, refs.crops, status)}

