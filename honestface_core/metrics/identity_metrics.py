"""Deg and Ref-Deg (docs/design.md §3): identity angles in degrees between face embeddings.

Embeddings come from an :class:`honestface_core.face.identity.IdentityEncoder` (ArcFace for the paper's Deg.; SFace
works offline). The angle itself is :func:`honestface_core.face.identity.angle_degrees`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from honestface_core.errors import HonestFaceError
from honestface_core.face.identity import angle_degrees


def deg(restored: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Deg.: per-pair angle (degrees) between restored and ground-truth embeddings, both ``(N, D)`` -> ``(N,)``."""
    if restored.shape[0] != gt.shape[0]:
        raise HonestFaceError("embeddings", f"{restored.shape[0]} restored and {gt.shape[0]} ground-truth faces",
                              "Pass one ground-truth face per restored face")
    return torch.stack([angle_degrees(r, g)[0, 0] for r, g in zip(restored, gt)]) if len(restored) else restored.new_zeros(0)


def ref_deg(restored: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Ref-Deg (ours): angle between each restored embedding ``(N, D)`` and the L2-normalised mean of the reference
    embeddings ``(K, D)`` -> ``(N,)``. An honesty check that needs no ground truth."""
    if references.shape[0] == 0:
        raise HonestFaceError("references", "no reference embeddings", "Pass at least one reference face")
    mean = F.normalize(references.float().mean(0, keepdim=True), dim=-1)
    return angle_degrees(restored, mean)[:, 0]
