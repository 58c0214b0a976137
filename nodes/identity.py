"""Identity similarity node: ArcFace / SFace embeddings, pairwise cosine similarity and Deg for IMAGE batches."""

from __future__ import annotations

import json

import comfy.model_management as mm
import comfy.utils
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.face.identity import angle_degrees, cosine_similarity, embed_largest_faces
from honestface_core.files.images import as_rgb_batch

from .declare import field, node
from .result_text import similarity_summary, ui_text
from .types import INSIGHTFACE_INPUT, OPENCV_SFACE_INPUT, pick_detector, pick_encoder

INPUT_KINDS = ["detect largest face", "aligned crops"]  # a list: ComfyUI checks list choices
NODE = "Face Identity Similarity"


def embed_images(images: torch.Tensor, kind: str, name: str, encoder, insightface=None, opencv=None):
    """Embed each image of a batch: its largest face (detected and aligned) or the image itself when it already is
    an aligned crop. Returns the embeddings, the batch index of each, and the indices where no face was found."""
    images = as_rgb_batch(images, name)
    if kind == "aligned crops":
        if images.shape[1] != images.shape[2]:
            raise HonestFaceError(f"{NODE}: '{name}'", f"images are {images.shape[2]}x{images.shape[1]}, not square crops",
                                  "Connect the crops of a Detect Faces node, or choose 'detect largest face'")
        return encoder.embed(images), list(range(images.shape[0])), []
    detector = pick_detector(NODE, insightface=insightface, opencv=opencv)
    bar = comfy.utils.ProgressBar(images.shape[0])
    found = embed_largest_faces(images, detector, encoder, 512, progress=lambda d, t: bar.update_absolute(d, t),
                                interrupt=mm.throw_exception_if_processing_interrupted)
    return found.embeddings, found.image_index, found.missing


@node("HonestFaceIdentitySimilarity", "HonestFace Face Identity Similarity", "HonestFace/identity", "compare",
      "Identity embeddings (ArcFace from insightface, or OpenCV SFace) of every image, and the pairwise cosine "
      "similarity and angle in degrees (the 'Deg.' metric: lower = more alike). Compares images with images_b, or "
      "every pair within images when images_b is not connected. Images without a face are listed in the report, "
      "never silently dropped.",
      required={
          "images": field("IMAGE", "Photos or aligned face crops."),
          "input_kind": field(INPUT_KINDS, "'detect largest face': find and align the largest face of each image; "
                              "'aligned crops': the images are FFHQ-aligned crops (e.g. from Detect Faces or a "
                              "restorer)."),
      },
      optional={
          "images_b": field("IMAGE", "Second batch: compare every image with every image of this one."),
          "insightface": INSIGHTFACE_INPUT,
          "opencv": OPENCV_SFACE_INPUT,
      },
      outputs=[("STRING", "report", "JSON: encoder, cosine and degree matrices, images without a face."),
               ("FLOAT", "mean_similarity", "Mean cosine similarity over the compared pairs."),
               ("FLOAT", "mean_deg", "Mean angle in degrees over the compared pairs (Deg.).")],
      output_node=True)
class IdentitySimilarity:
    def compare(self, images, input_kind: str, images_b=None, insightface=None, opencv=None):
        encoder = pick_encoder(NODE, insightface=insightface, opencv=opencv)
        emb_a, idx_a, miss_a = embed_images(images, input_kind, "images", encoder, insightface, opencv)
        emb_b, idx_b, miss_b = (emb_a, idx_a, []) if images_b is None else embed_images(
            images_b, input_kind, "images_b", encoder, insightface, opencv)
        cos, deg = cosine_similarity(emb_a, emb_b), angle_degrees(emb_a, emb_b)
        if images_b is None:  # every pair once, without an image against itself
            pairs = torch.triu(torch.ones_like(cos, dtype=torch.bool), diagonal=1)
        else:
            pairs = torch.ones_like(cos, dtype=torch.bool)
        if not pairs.any():
            raise HonestFaceError(f"{NODE}: images", f"only {len(idx_a)} face(s) found, nothing to compare",
                                  "Give at least two images with a face, or connect images_b")
        report = {"encoder": encoder.name, "rows": idx_a, "columns": idx_b,
                  "cosine": cos.cpu().tolist(), "deg": deg.cpu().tolist(),
                  "no_face_images": miss_a, "no_face_images_b": miss_b}
        text = json.dumps(report, indent=1)
        result = (text, float(cos[pairs].mean()), float(deg[pairs].mean()))
        return {"ui": ui_text(text, similarity_summary(report, images_b is None, *result[1:])), "result": result}

