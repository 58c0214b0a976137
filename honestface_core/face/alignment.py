"""Five-point face alignment: detected faces -> FFHQ-template crops, and the checks on aligned crops.

The geometry (templates, similarity fit, warps) is in :mod:`honestface_core.geometry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.face.detection import DetectedFace
from honestface_core.geometry import (PADDING_MODES, affine_scale, estimate_similarity, shrink_opencv, shrink_plan,
                                      template_for_size, uses_opencv, warp_affine, warp_affine_opencv, warp_antialiased)


def check_aligned_crops(crops: torch.Tensor, min_size: int = 1, size_advice: str = "") -> torch.Tensor:
    """Check that ``crops`` are aligned face crops (N, S, S, 3) with S >= ``min_size``; return them unchanged.

    ``size_advice`` tells the user which crop size to align at when the crops are too small.
    """
    if not torch.is_tensor(crops) or crops.ndim != 4 or crops.shape[-1] != 3 or crops.shape[1] != crops.shape[2]:
        got = tuple(crops.shape) if torch.is_tensor(crops) else type(crops).__name__
        raise HonestFaceError("face crops", f"expected square aligned crops of shape (N, S, S, 3), got {got}",
                              "Pass the crops from face detection / alignment (HonestFace Detect Faces / align_faces)")
    if crops.shape[1] < min_size:
        raise HonestFaceError("face crops", f"crops are only {crops.shape[1]} pixels wide", size_advice)
    return crops


@dataclass
class AlignedFaces:
    """Aligned face crops with everything needed to paste them back.

    Attributes:
        crops: ``(N, S, S, 3)`` float [0, 1].
        matrices: ``(N, 2, 3)`` float32, image pixels -> crop pixels.
        image_index: ``(N,)`` long, the batch image each face came from.
        faces: the detections, in the same order.
        size: crop side S.
    """

    crops: torch.Tensor
    matrices: torch.Tensor
    image_index: torch.Tensor
    faces: list[DetectedFace] = field(default_factory=list)
    size: int = 512

    def __len__(self) -> int:
        return int(self.crops.shape[0])

    def select(self, indices: list[int]) -> "AlignedFaces":
        """These faces only, in the given order."""
        sel = torch.as_tensor(indices, dtype=torch.long, device=self.crops.device)
        return AlignedFaces(self.crops[sel], self.matrices[sel], self.image_index[sel],
                            [self.faces[i] for i in indices], self.size)


def align_faces(images: torch.Tensor, faces: list[DetectedFace], size: int = 512,
                padding_mode: str = "reflection") -> AlignedFaces:
    """Warp every detected face to the FFHQ template at ``size`` x ``size`` (on the images' device).

    ``images`` is ``(B, H, W, 3)``; each face's ``image_index`` picks its source image. Sampling is bicubic
    (our choice: sharper than bilinear, and an align + paste-back round trip stays within ~1 grey level on
    average). When the face is more than twice the crop size, its region is first shrunk with antialiasing
    so the crop does not alias (our choice). Matrices are fitted on the host from the detections; on a GPU
    the faces of each image are sampled in one ``grid_sample`` call with no read-back to the host; CPU
    float32 images are warped with OpenCV (:func:`uses_opencv`).
    """
    from honestface_core.files.images import rgb_layout

    images = rgb_layout(images, "images")  # values and size are checked where images enter (as_rgb_batch)
    if padding_mode not in PADDING_MODES:
        raise HonestFaceError("padding mode", f"'{padding_mode}' is unknown", f"Use one of {', '.join(PADDING_MODES)}")
    for f in faces:
        if not 0 <= f.image_index < images.shape[0]:
            raise HonestFaceError("faces", f"face refers to image {f.image_index} but the batch has {images.shape[0]} images",
                                  "Detect faces on the same image batch you align")
    dev = images.device
    template = template_for_size(size)
    mats = np.stack([estimate_similarity(f.kps, template) for f in faces]) if faces else np.zeros((0, 2, 3))
    index = np.array([f.image_index for f in faces], dtype=np.int64)
    crops = images.new_empty((len(faces), size, size, 3))
    align = _align_opencv if uses_opencv(images) else _align_torch
    align(images, mats, index, crops, padding_mode)
    return AlignedFaces(crops, torch.from_numpy(mats).to(dev, torch.float32),
                        torch.from_numpy(index).to(dev), list(faces), int(size))


def _align_opencv(images: torch.Tensor, mats: np.ndarray, index: np.ndarray, crops: torch.Tensor, padding_mode: str) -> None:
    """Fill ``crops`` (N, S, S, 3) from CPU float32 ``images`` with OpenCV, writing straight into their memory.
    Everything here is single-threaded numpy / OpenCV work: torch's OpenMP threads cost 2-6x on these small
    element-wise steps when other processes share the cores (measured, docs/restore.md)."""
    size, images = crops.shape[1], images.detach().contiguous()
    for i, (m, b, scale) in enumerate(zip(mats, index.tolist(), affine_scale(mats))):
        src = images[b].numpy()
        if scale < 0.5:
            x0, y0, x1, y1, hs, ws, m = shrink_plan(m, size, 2.0 * float(scale), src.shape[:2])
            src = shrink_opencv(src[y0:y1, x0:x1], (hs, ws))
        dst = crops[i].numpy()
        np.clip(warp_affine_opencv(src, m, (size, size), padding_mode, dst=dst), 0, 1, out=dst)


def _align_torch(images: torch.Tensor, mats: np.ndarray, index: np.ndarray, crops: torch.Tensor, padding_mode: str) -> None:
    """Fill ``crops`` with ``grid_sample`` on the images' device: one call per image for all its faces, the
    few faces larger than twice the crop one by one after an antialiased shrink. No read-back to the host."""
    dev, size = images.device, crops.shape[1]
    chw = images.permute(0, 3, 1, 2)
    scales = affine_scale(mats)
    direct = np.flatnonzero(scales >= 0.5)
    if len(direct):
        sel = torch.as_tensor(direct, device=dev)
        warped = warp_affine(chw, torch.from_numpy(mats[direct]), size, index[direct], mode="bicubic", padding_mode=padding_mode)
        crops[sel] = warped.permute(0, 2, 3, 1)
    for i in np.flatnonzero(scales < 0.5).tolist():
        crops[i] = warp_antialiased(chw[index[i]][None], mats[i], size, "bicubic", padding_mode)[0].permute(1, 2, 0)
    crops.clamp_(0, 1)
