"""The 512 aligned crops every metric is computed on, and the reference embeddings for Ref-Deg, shared by
``honestface evaluate`` and the ComfyUI Landmark Evaluation node (docs/evaluation.md, "Command line").

Our choices: in detect mode the largest face of each ground truth is found and the SAME similarity transform
aligns the restored image, so a global shift of the restoration stays visible in L2-LD; a restored batch of another
size is first resized to the ground truth's size. Given crops of another size are resized to 512. Both resizes are
bicubic with antialiasing; each one adds a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from honestface_core.metrics.scoring import EVAL_SIZE


@dataclass
class EvalCrops:
    """``(B, 512, 512, 3)`` restored and ground-truth crops (zeros where the ground truth has no face), the batch
    indices without a face, and notes about resizing."""

    restored: torch.Tensor
    gt: torch.Tensor
    no_face: list[int]
    notes: list[str]


def resize_images(images: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``(B, H, W, 3)`` -> ``(B, h, w, 3)``: bicubic with antialiasing, clamped to [0, 1]."""
    x = F.interpolate(images.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def _to_eval_size(images: torch.Tensor, name: str, notes: list[str]) -> torch.Tensor:
    if images.shape[1:3] == (EVAL_SIZE, EVAL_SIZE):
        return images
    notes.append(f"{name} crops {images.shape[2]}x{images.shape[1]} rescaled to {EVAL_SIZE}x{EVAL_SIZE}")
    return resize_images(images, EVAL_SIZE, EVAL_SIZE)


def eval_crops(restored: torch.Tensor, gt: torch.Tensor, detector=None, gt_name: str = "ground truth",
               interrupt: Callable[[], None] | None = None) -> EvalCrops:
    """Crops of equally long ``(B, H, W, 3)`` batches. Without ``detector`` the images are aligned crops (resized to
    512 when needed); with one, the largest face of each ground truth aligns both images (module docstring).
    ``interrupt`` as in :func:`honestface_core.face.detection.detect_faces`."""
    notes: list[str] = []
    if detector is None:
        return EvalCrops(_to_eval_size(restored, "restored", notes), _to_eval_size(gt, gt_name, notes), [], notes)
    from honestface_core.face.alignment import align_faces
    from honestface_core.face.detection import detect_faces

    if restored.shape[1:3] != gt.shape[1:3]:
        notes.append(f"restored {restored.shape[2]}x{restored.shape[1]} resized to the ground truth's "
                     f"{gt.shape[2]}x{gt.shape[1]}")
        restored = resize_images(restored, gt.shape[1], gt.shape[2])
    faces = detect_faces(detector, gt, "largest", interrupt=interrupt)
    index = [f.image_index for f in faces]
    crops = []
    for images in (restored, gt):  # the ground truth's transforms align both
        out = images.new_zeros((images.shape[0], EVAL_SIZE, EVAL_SIZE, 3))
        if faces:
            out[index] = align_faces(images, faces, EVAL_SIZE).crops
        crops.append(out)
    return EvalCrops(crops[0], crops[1], [i for i in range(gt.shape[0]) if i not in index], notes)


def embed_references(images: torch.Tensor | Sequence[torch.Tensor], encoder, detector=None,
                     interrupt: Callable[[], None] | None = None) -> tuple[torch.Tensor | None, list[int]]:
    """``(K, D)`` embeddings of reference images (None when none is usable) and the indices of those without a
    face. ``images``: a batch or a sequence of batches of different sizes, numbered one after the other. With
    ``detector`` each image's largest face is aligned like the inputs; without, the images are aligned crops."""
    if detector is None:
        batches = [images] if isinstance(images, torch.Tensor) else list(images)
        if not batches:
            return None, []
        return encoder.embed(torch.cat([_to_eval_size(t, "reference", []) for t in batches])), []
    from honestface_core.face.identity import embed_largest_faces

    found = embed_largest_faces(images, detector, encoder, EVAL_SIZE, interrupt=interrupt)
    return (found.embeddings if found.image_index else None), found.missing
