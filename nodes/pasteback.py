"""Paste-back node: put (restored) aligned crops back into the full images."""

from __future__ import annotations

import comfy.model_management as mm

from honestface_core.errors import HonestFaceError
from honestface_core.files.images import as_rgb_batch
from honestface_core.face.pasteback import paste_back

from .declare import field, node
from .detection import face_masks
from .types import COLOR_CORRECTIONS, FACES, FACEXLIB_HELPER, FACEXLIB_TOOLTIP, MASK_INPUT

NODE = "Paste Faces Back"


@node("HonestFacePasteFacesBack", "HonestFace Paste Faces Back", "HonestFace/faces", "paste",
      "Warps each (restored) face crop back into its source image and blends it in with a soft mask: the face "
      "parser's (skin, brows, eyes, nose, lips, from the facexlib input) or a feathered square. Optional colour "
      "correction matches each crop's colours to the original face. Pixels outside the faces are left untouched; "
      "images without a face come out unchanged.",
      required={
          "image": field("IMAGE", "The images the faces were detected in (same batch as Detect Faces)."),
          "faces": field(FACES, "The faces output of Detect Faces (alignment matrices)."),
          "crops": field("IMAGE", "One crop per face, in the order of 'faces' (e.g. restored crops)."),
          "mask": MASK_INPUT,
          "color_correction": field(COLOR_CORRECTIONS, "Match the crop's colours to the original face: 'adain' "
                                    "(mean/std per channel) or 'wavelet' (low frequencies)."),
      },
      optional={"facexlib": field(FACEXLIB_HELPER, FACEXLIB_TOOLTIP + " Needed for mask 'parsing'.")},
      outputs=[("IMAGE", "image", "The images with the faces pasted back, same size as the input.")])
class PasteFacesBack:
    def paste(self, image, faces, crops, mask: str, color_correction: str, facexlib=None):
        images = as_rgb_batch(image, "image")
        crops = as_rgb_batch(crops, "crops") if len(crops) else crops
        if len(crops) != len(faces.crops):
            raise HonestFaceError(f"{NODE}: crops", f"{len(crops)} crops for {len(faces.crops)} faces",
                                  "Connect the crops made from this Detect Faces output (one per face, same order)")
        if len(faces.crops) == 0:
            return (images,)
        if int(faces.image_index.max()) >= images.shape[0]:
            raise HonestFaceError(f"{NODE}: image", f"the faces come from a batch of at least {int(faces.image_index.max()) + 1} "
                                  f"images, this batch has {images.shape[0]}", "Connect the image that went into Detect Faces")
        if mask == "parsing" and getattr(facexlib, "parser", None) is None:
            raise HonestFaceError(f"{NODE}: mask", "'parsing' needs a face parser",
                                  "Connect a HonestFace facexlib loader with a parser, or choose 'feathered'")
        mm.throw_exception_if_processing_interrupted()
        masks = face_masks(faces, facexlib if mask != "feathered" else None, crops)
        out = paste_back(images, crops, faces.matrices, faces.image_index, masks=masks,
                         color_correction=color_correction, reference_crops=faces.crops)
        return (out,)

