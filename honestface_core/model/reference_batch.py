"""References in the model's batch layout, and the conversion of aligned crops to the model's input.

:class:`EncodedReferences`: what the UNet batch needs of one reference set (``HonestFaceModel.encode_references``,
cached on the set). :class:`ReferenceBatch`: the references of every face of a batch, padded to one K with a mask, so
one batch mixes faces with different reference sets and blind faces. No diffusers import (the pipeline imports this).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from honestface_core.errors import HonestFaceError

if TYPE_CHECKING:
    from honestface_core.model.honestface import HonestFaceModel


@dataclass(frozen=True)
class EncodedReferences:
    """What the UNet batch needs of one reference set, on the model's device (:meth:`HonestFaceModel.encode_references`).

    Attributes:
        embeddings: (K, D) L2-normalised ArcFace embeddings, float32.
        features: (K, C, h, w) backbone feature maps (``backbone.features``) in the model's dtype.
    """

    embeddings: torch.Tensor
    features: torch.Tensor

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


@dataclass
class ReferenceBatch:
    """Padded references of a batch.

    Attributes:
        images: (B, K, 3, S, S) FFHQ-aligned crops in [-1, 1] (padding slots are ignored).
        mask: (B, K) bool, True where a reference exists. A row of False = blind sample.
        embeddings: optional (B, K, D) precomputed ArcFace embeddings (e.g. cached per identity); computed from
            ``images`` with the model's backbone when omitted.
        features: optional (B, K, C, h, w) precomputed backbone feature maps (``backbone.features``) of the
            references; computed from ``images`` when omitted.
    """

    images: torch.Tensor | None
    mask: torch.Tensor
    embeddings: torch.Tensor | None = None
    features: torch.Tensor | None = None

    @classmethod
    def from_list(cls, refs: Sequence[torch.Tensor | None]) -> "ReferenceBatch":
        """Pad a list of per-sample ``(K_i, 3, S, S)`` tensors (or None / K_i = 0 for blind samples)."""
        shapes = {tuple(r.shape[1:]) for r in refs if r is not None and r.shape[0]}
        if len(shapes) > 1:
            raise HonestFaceError("references", f"have different crop shapes {sorted(shapes)}",
                                  "Align every reference to the same crop size (512x512 FFHQ template)")
        k = max([0] + [r.shape[0] for r in refs if r is not None])
        ref = next((r for r in refs if r is not None and r.shape[0]), None)
        if ref is None:
            return cls(None, torch.zeros(len(refs), 0, dtype=torch.bool))
        images = ref.new_zeros(len(refs), k, *ref.shape[1:])
        mask = torch.zeros(len(refs), k, dtype=torch.bool, device=ref.device)
        for i, r in enumerate(refs):
            if r is not None and r.shape[0]:
                images[i, : r.shape[0]] = r
                mask[i, : r.shape[0]] = True
        return cls(images, mask)

    @classmethod
    def from_encoded(cls, refs: Sequence[EncodedReferences | None]) -> "ReferenceBatch":
        """One row per face from its :class:`EncodedReferences` (None = blind face). Faces that all share one
        encoded set (the same object) get expanded views, no copies; otherwise each row is padded to the largest
        K with the mask False in the empty slots, so one UNet batch mixes people and blind faces."""
        present = [r for r in refs if r is not None and len(r)]
        n = len(refs)
        if not present:
            return cls(None, torch.zeros(n, 0, dtype=torch.bool))
        first = present[0]
        emb, feat = first.embeddings, first.features
        if len(present) == n and all(r is first for r in refs):
            mask = torch.ones(n, len(first), dtype=torch.bool, device=emb.device)
            return cls(None, mask, emb.expand(n, -1, -1), feat.expand(n, *feat.shape))
        k = max(len(r) for r in present)
        batch = cls(None, torch.zeros(n, k, dtype=torch.bool, device=emb.device), emb.new_zeros(n, k, *emb.shape[1:]),
                    feat.new_zeros(n, k, *feat.shape[1:]))
        for i, r in enumerate(refs):
            if r is not None and len(r):
                batch.embeddings[i, : len(r)] = r.embeddings
                batch.features[i, : len(r)] = r.features
                batch.mask[i, : len(r)] = True
        return batch


class ReferenceSource(Protocol):
    """What :meth:`HonestFaceModel.encode_references` reads of a reference set
    (:class:`honestface_core.face.references.ReferenceSet`)."""

    crops: torch.Tensor  # (K, S, S, 3) float [0, 1], FFHQ-aligned
    embeddings: torch.Tensor  # (K, D)
    encoder_name: str  # e.g. "arcface:glintr100"

    def __len__(self) -> int: ...

    def cached(self, owner: object, key: Hashable, build: Callable[[], Any]) -> Any:
        """``build()``, computed once per ``owner`` (held weakly) and ``key``, kept on the set."""


def model_resolution(model: "HonestFaceModel") -> int:
    """Side of the square crops the model restores (512 for SD-2.1-base)."""
    return int(model.config.vre.resolution)


def crops_to_model(crops: torch.Tensor, model: "HonestFaceModel") -> torch.Tensor:
    """``(N, S, S, 3)`` [0, 1] -> ``(N, 3, R, R)`` [-1, 1] on the model's device and dtype (resized if S != R)."""
    x = crops.to(model.device, torch.float32).permute(0, 3, 1, 2)
    res = model_resolution(model)
    if x.shape[-1] != res:
        x = F.interpolate(x, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
    return (x * 2 - 1).to(model.dtype)


__all__ = ["EncodedReferences", "ReferenceBatch", "ReferenceSource", "crops_to_model", "model_resolution"]
