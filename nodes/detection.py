"""Face detection + alignment node."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils
import torch

from honestface_core.face.alignment import align_faces
from honestface_core.face.detection import detect_faces
from honestface_core.files.images import as_rgb_batch
from honestface_core.face.parsing import feathered_mask

from .declare import field, node
from .types import FACES, FACEXLIB_HELPER, FACEXLIB_TOOLTIP, INSIGHTFACE_INPUT, OPENCV_INPUT, pick_detector

logger = logging.getLogger(__name__)

SELECTION_TOOLTIP = ("Which faces of each image: 'all', 'largest', or face numbers such as '0' or '0,2' "
                     "(faces are numbered left to right from 0 in each image).")


def face_masks(faces, facexlib=None, crops: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, S, S)`` masks of ``crops`` (default: the aligned crops of ``faces``): the face parser's when
    ``facexlib`` carries one, else feathered."""
    crops = faces.crops if crops is None else crops
    parser = getattr(facexlib, "parser", None)
    if parser is not None and len(crops):
        return parser.face_mask(crops)
    return feathered_mask(crops.shape[1], len(crops), crops.device)


def warn_images_without_faces(node: str, faces, batch_size: int) -> None:
    missing = sorted(set(range(batch_size)) - set(faces.image_index.tolist()))
    if missing:
        logger.warning("[%s] no face found in image(s) %s of the batch; they pass through unchanged",
                       node, ", ".join(str(i) for i in missing))


@node("HonestFaceDetectFaces", "HonestFace Detect Faces", "HonestFace/faces", "detect",
      "Finds every face in every image of the batch, keeps the selected ones and aligns each to an FFHQ-template "
      "square crop (the layout face restorers expect). Images without a face pass through with a warning. Connect "
      "exactly one detector: insightface, facexlib or OpenCV.",
      required={
          "image": field("IMAGE", "Images to search for faces (any batch size)."),
          "faces": field("STRING", SELECTION_TOOLTIP, default="all"),
          "crop_size": field("INT", "Side of the aligned square crops in pixels (HonestFace uses 512).",
                             default=512, min=64, max=2048, step=8),
      },
      optional={
          "insightface": INSIGHTFACE_INPUT,
          "facexlib": field(FACEXLIB_HELPER, FACEXLIB_TOOLTIP + " Its parser, if any, makes the masks."),
          "opencv": OPENCV_INPUT,
      },
      outputs=[("IMAGE", "crops", "Aligned face crops, one per face (empty batch when no face was found)."),
               ("MASK", "masks", "Soft face masks of the crops (face parser if the facexlib input has one, else "
                "feathered)."),
               (FACES, "faces", "Boxes, landmarks, alignment matrices and source image of every face, for "
                "paste-back.")])
class DetectFaces:
    def detect(self, image, faces: str, crop_size: int, insightface=None, facexlib=None, opencv=None):
        images = as_rgb_batch(image, "image")
        detector = pick_detector("Detect Faces", insightface=insightface, facexlib=facexlib, opencv=opencv)
        bar = comfy.utils.ProgressBar(images.shape[0])
        found = detect_faces(detector, images, faces, progress=lambda done, total: bar.update_absolute(done, total),
                             interrupt=mm.throw_exception_if_processing_interrupted)
        aligned = align_faces(images, found, crop_size)
        warn_images_without_faces("Detect Faces", aligned, images.shape[0])
        return (aligned.crops, face_masks(aligned, facexlib), aligned)

