"""The honesty report of restored faces (docs/honesty.md): one :func:`honesty_report` call per batch of faces.

Per face, with no ground truth:

- **Ref-Deg** (with references): angle in degrees between the restored face and the normalised mean of the
  person's reference embeddings (:func:`honestface_core.metrics.identity_metrics.ref_deg`).
- **input Deg**: angle between the input face and the restored face degraded to the input
  (:mod:`.input_consistency`); ``input_deg_sharp`` is the angle to the restored face as it is, which also counts
  the gap between any sharp and blurred photo (our choice to report the first in the summary).
- **input consistency** and the **honesty map** (:func:`~.input_consistency.input_consistency`).
- **landmark drift** (with a landmark model): ALD and L2-LD (:func:`~.landmark_distance.landmark_distances`,
  in 512-crop pixels) from the input's landmarks to those of the degraded restored face (our choice, as for
  input Deg: a detector places landmarks differently on sharp and blurred faces).

Everything is batched over faces: one encoder call for inputs, restored and degraded crops (plus one to re-embed
references made by another encoder), one landmark pass over inputs and degraded crops, and one read of the numbers
back to the host; the maps stay on the crops' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from honestface_core.face.identity import IdentityEncoder, angle_degrees
from honestface_core.face.landmarks import LandmarkDetector
from honestface_core.face.references import ReferenceSet
from honestface_core.metrics.identity_metrics import ref_deg
from honestface_core.metrics.input_consistency import BLUR_CANDIDATES, WORST_FRACTION, input_consistency, input_resolution
from honestface_core.metrics.landmark_distance import landmark_distances

if TYPE_CHECKING:
    from honestface_core.pipeline import RestoreResult

NO_LANDMARK_MODEL = "no landmark model"
NO_REFERENCES = "no references"


@dataclass
class FaceHonesty:
    """The honesty report of one face; None where a number could not be computed (``*_note`` says why).

    Angles in degrees, landmark distances in 512-crop pixels, ``input_resolution`` in input pixels across the
    crop, ``input_blur`` (the fitted degradation) in input pixels, departures in units of the face's contrast.
    ``honesty_map`` is ``(S, S)`` on the crops' device.
    """

    face: int
    input_consistency: float
    input_deg: float
    input_deg_sharp: float
    input_resolution: float
    input_blur: float
    departure_mean: float
    departure_worst: float
    ref_deg: float | None
    ald: float | None
    l2_ld: float | None
    ref_note: str
    landmark_note: str
    honesty_map: torch.Tensor = field(repr=False)

    @property
    def summary(self) -> str:
        """One line, e.g. ``face 0: Ref-Deg 31.2, input Deg 3.1, input consistency 0.94 (...), landmark drift ...``."""
        ref = f"Ref-Deg {self.ref_deg:.1f}" if self.ref_deg is not None else f"Ref-Deg: n/a ({self.ref_note})"
        drift = (f"landmark drift ALD {self.ald:.2f} px, L2-LD {self.l2_ld:.2f} px" if self.ald is not None
                 else f"landmark drift: n/a ({self.landmark_note})")
        return (f"face {self.face}: {ref}, input Deg {self.input_deg:.1f}, input consistency "
                f"{self.input_consistency:.2f} (input {self.input_resolution:.0f} px, blur {self.input_blur:.2f} px), "
                f"{drift}")

    def to_dict(self) -> dict:
        """The numbers (floats rounded to 4 decimals) and notes as JSON-ready values (no map)."""
        keys = ("face", "input_consistency", "input_deg", "input_deg_sharp", "input_resolution", "input_blur",
                "departure_mean", "departure_worst", "ref_deg", "ald", "l2_ld", "ref_note", "landmark_note")
        values = {k: getattr(self, k) for k in keys}
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()} | {"summary": self.summary}


@dataclass
class HonestyReport:
    """:func:`honesty_report`'s result: ``faces`` in crop order, the encoder and landmark scheme used, the honesty
    ``maps`` ``(N, S, S)`` and the ``degraded`` restored crops ``(N, S, S, 3)`` on the crops' device."""

    faces: list[FaceHonesty]
    encoder: str
    landmarks: str | None
    maps: torch.Tensor = field(repr=False)
    degraded: torch.Tensor = field(repr=False)

    @property
    def lines(self) -> list[str]:
        return [f.summary for f in self.faces]

    def to_dict(self) -> dict:
        return {"identity_encoder": self.encoder, "landmark_model": self.landmarks,
                "blur_candidates_input_px": list(BLUR_CANDIDATES), "worst_fraction": WORST_FRACTION,
                "faces": [f.to_dict() for f in self.faces]}


def _reference_mean_angles(restored_emb: torch.Tensor, references: ReferenceSet | Sequence[ReferenceSet | None] | None, encoder: IdentityEncoder,
                           n: int) -> tuple[torch.Tensor, list[str]]:
    """Ref-Deg per face against its own references (NaN without) and each face's note for a missing one."""
    per_face = list(references) if isinstance(references, (list, tuple)) else [references] * n
    angles = torch.full((n,), math.nan)
    for refs in {id(r): r for r in per_face if r is not None and len(r)}.values():  # each set embedded once
        idx = torch.tensor([i for i, r in enumerate(per_face) if r is refs])
        emb = refs.embeddings_by(encoder).to(restored_emb.device)
        angles[idx] = ref_deg(restored_emb[idx.to(restored_emb.device)], emb).cpu()
    return angles, ["" if r is not None and len(r) else NO_REFERENCES for r in per_face]


def _landmark_drift(landmarks: LandmarkDetector | None, inputs: torch.Tensor, degraded: torch.Tensor
                    ) -> tuple[np.ndarray, np.ndarray, list[str], str | None]:
    """ALD and L2-LD (N,) from the inputs' landmarks to the degraded crops' (NaN where missing) and the notes."""
    n, size = inputs.shape[0], inputs.shape[1]
    if landmarks is None:
        return np.full(n, np.nan), np.full(n, np.nan), [NO_LANDMARK_MODEL] * n, None
    if n == 0:
        return np.zeros(0), np.zeros(0), [], landmarks.scheme
    found = landmarks.detect(torch.cat([inputs, degraded.to(inputs.device)]))
    dist = landmark_distances(found.points[n:], found.points[:n], found.scheme, image_size=size)
    ok = found.found
    notes = ["" if a and b else f"no face found by {landmarks.name} in the "
             + " and ".join(w for w, hit in (("input", a), ("degraded restored", b)) if not hit) + " crop"
             for a, b in zip(ok[:n], ok[n:])]
    return np.asarray(dist["ald"]), np.asarray(dist["l2_ld"]), notes, found.scheme


def _optional(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def honesty_report(inputs: torch.Tensor, restored: torch.Tensor, encoder: IdentityEncoder, resolution: torch.Tensor,
                   masks: torch.Tensor | None = None, references: ReferenceSet | Sequence[ReferenceSet | None] | None = None,
                   landmarks: LandmarkDetector | None = None) -> HonestyReport:
    """The honesty report of restored faces against their inputs (see the module docstring).

    Args:
        inputs: ``(N, S, S, 3)`` aligned input crops, float [0, 1].
        restored: ``(N, S, S, 3)`` the restored crops, same order.
        encoder: any :class:`~honestface_core.face.identity.IdentityEncoder` (ArcFace, SFace, the model's backbone).
        resolution: ``(N,)`` effective input resolution (:func:`~.input_consistency.input_resolution`).
        masks: ``(N, S, S)`` face masks, else the template face mask.
        references: the person's references (Ref-Deg), or one set (or None) per face (group photos); a set made by
            another encoder is re-embedded from its crops.
        landmarks: a landmark detector (landmark drift), e.g. ``DlibLandmarks``.
    """
    check = input_consistency(inputs, restored, resolution, masks)
    n = inputs.shape[0]
    emb = encoder.embed(torch.cat([inputs, restored.to(inputs.device), check.degraded.to(inputs.device)]))
    e_in, e_out, e_deg = emb[:n], emb[n:2 * n], emb[2 * n:]
    refs, ref_notes = _reference_mean_angles(e_out, references, encoder, n)
    ald, l2, notes, scheme = _landmark_drift(landmarks, inputs, check.degraded)
    dev = check.score.device
    res = torch.as_tensor(resolution, dtype=torch.float32).reshape(-1).to(dev).clamp(max=inputs.shape[1])
    columns = {"input_consistency": check.score, "departure_worst": check.worst, "departure_mean": check.mean,
               "input_blur": check.blur, "input_resolution": res,
               "input_deg": angle_degrees(e_deg, e_in).diagonal().to(dev),
               "input_deg_sharp": angle_degrees(e_out, e_in).diagonal().to(dev)}
    values = torch.stack(list(columns.values())).cpu().double().numpy()  # the one read back to the host
    faces = [FaceHonesty(face=i, **{k: float(v[i]) for k, v in zip(columns, values)}, ref_deg=_optional(float(refs[i])),
                         ald=_optional(float(ald[i])), l2_ld=_optional(float(l2[i])), ref_note=ref_notes[i],
                         landmark_note=notes[i], honesty_map=check.maps[i]) for i in range(n)]
    return HonestyReport(faces, encoder.name, scheme, check.maps, check.degraded)


def report_restore_result(result: "RestoreResult", encoder: IdentityEncoder, landmarks: LandmarkDetector | None = None,
                          masks: torch.Tensor | None = None) -> HonestyReport:
    """:func:`honesty_report` of :func:`honestface_core.pipeline.restore_images`' result: its aligned input crops,
    restored crops, each face's references and the effective input resolution from its alignment matrices."""
    faces = result.faces
    return honesty_report(faces.crops, result.restored, encoder, input_resolution(faces.matrices, faces.crops.shape[1]),
                          masks, result.face_references, landmarks)


__all__ = ["FaceHonesty", "HonestyReport", "honesty_report", "report_restore_result"]
