"""Identity library: several people's identity sets, and which detected face is which person (group photos).

Every face is compared with each set's mean embedding (cosine, the same encoder on both sides); faces and sets are
paired greedily from the most similar pair down, each set used once and each pair at or above ``threshold``
(our choice: a group photo shows each person once). Faces left without a set are unmatched: the caller restores
them blind or leaves them untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from honestface_core.errors import HonestFaceError
from honestface_core.face.identity import IdentityEncoder
from honestface_core.face.references import ReferenceSet

DEFAULT_THRESHOLD = 0.3
"""Lowest cosine similarity that counts as a match (our choice). Measured with SFace on the test photos
(tests/face/test_identity_library.py): a face and its own person's set 0.80-0.93, another person's set 0.09-0.21.
Raise it when strangers get matched, lower it when a person's own set is missed."""

UNMATCHED = ("blind", "skip")
"""What happens to a face no set matches: restored without references, or left untouched."""


@dataclass(frozen=True)
class IdentityMatch:
    """Which set a face got: ``identity`` is the set's name (None when unmatched) and ``similarity`` the cosine
    to that set's mean embedding (to the closest set when unmatched)."""

    face: int
    identity: str | None
    similarity: float

    def describe(self) -> str:
        if self.identity is None:
            return f"face {self.face}: no identity (closest similarity {self.similarity:.2f})"
        return f"face {self.face}: {self.identity} (similarity {self.similarity:.2f})"


@dataclass
class IdentityLibrary:
    """Named identity sets, one per person."""

    names: list[str]
    sets: list[ReferenceSet]

    def __post_init__(self):
        if len(self.names) != len(self.sets) or not self.sets:
            raise HonestFaceError("identity library", f"has {len(self.names)} names for {len(self.sets)} identity sets",
                                  "Give one name per identity set, and at least one set")
        if len(set(self.names)) != len(self.names):
            raise HonestFaceError("identity library", f"names are not unique: {self.names}", "Name each person once")
        empty = [n for n, s in zip(self.names, self.sets) if len(s) == 0]
        if empty:
            raise HonestFaceError(f"identity set '{empty[0]}'", "has no references", "Rebuild it from photos with a face")

    def __len__(self) -> int:
        return len(self.sets)

    def set_embeddings(self, encoder: IdentityEncoder) -> torch.Tensor:
        """``(P, D)`` mean embedding of each set by ``encoder``: a set made by that encoder uses its stored
        embeddings, any other is re-embedded from its aligned crops (two encoders' spaces never mix)."""
        return torch.cat([s.mean_embedding(encoder).cpu() for s in self.sets])

    def match(self, crops: torch.Tensor, encoder: IdentityEncoder, threshold: float = DEFAULT_THRESHOLD) -> list[IdentityMatch]:
        """Match aligned face crops ``(N, S, S, 3)`` to the sets (see the module docstring)."""
        if not -1.0 <= float(threshold) <= 1.0:
            raise HonestFaceError("identity threshold", f"{threshold} is outside -1..1", f"Use e.g. {DEFAULT_THRESHOLD}")
        if crops.shape[0] == 0:
            return []
        faces = F.normalize(encoder.embed(crops).float(), dim=-1).cpu()
        sim = faces @ self.set_embeddings(encoder).T  # (N, P)
        best = sim.max(1).values.tolist()
        assigned: dict[int, tuple[int, float]] = {}
        used: set[int] = set()
        order = sorted(((float(sim[i, p]), i, p) for i in range(sim.shape[0]) for p in range(sim.shape[1])), reverse=True)
        for value, i, p in order:
            if value < threshold:
                break
            if i not in assigned and p not in used:
                assigned[i] = (p, value)
                used.add(p)
        return [IdentityMatch(i, self.names[assigned[i][0]], assigned[i][1]) if i in assigned
                else IdentityMatch(i, None, best[i]) for i in range(sim.shape[0])]

    def references_for(self, matches: list[IdentityMatch]) -> list[ReferenceSet | None]:
        """Each face's identity set (None when unmatched), in face order."""
        by_name = dict(zip(self.names, self.sets))
        return [by_name[m.identity] if m.identity is not None else None for m in matches]
