"""Scores of aligned crops, shared by ``honestface evaluate`` and the ComfyUI Landmark Evaluation node: the report
columns and :func:`score_crops` (docs/evaluation.md, "The metrics"). Importing this module loads numpy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from honestface_core.errors import HonestFaceError

#: report columns, in order (the paper's names, then ours); only the computed ones appear in a report. Our ALD is
#: labelled "(ours)"; the "sum (hypothesis)" columns are our guess at the paper's ALD scale (docs/evaluation.md)
COLUMNS = ("LPIPS", "DISTS", "C-IQA", "M-IQA", "MUSIQ", "FID", "Deg.", "L2-LD", "ALD-e (ours)", "ALD-m (ours)",
           "PSNR", "SSIM", "ALD (ours)", "Ref-Deg", "ALD-e sum (hypothesis)", "ALD-m sum (hypothesis)")
#: landmark_distances keys -> CropScores.values keys
_LANDMARK_KEYS = {"l2_ld": "L2-LD", "ald": "ALD", "ald_e": "ALD-e", "ald_m": "ALD-m",
                  "ald_e_sum": "ALD-e sum (hypothesis)", "ald_m_sum": "ALD-m sum (hypothesis)"}
#: CropScores.values keys renamed in every report (our ALD is never shown under the paper's bare names)
REPORT_NAMES = {"ALD": "ALD (ours)", "ALD-e": "ALD-e (ours)", "ALD-m": "ALD-m (ours)"}
#: side of the aligned crops every metric is computed on
EVAL_SIZE = 512


@dataclass
class CropScores:
    """Per-face scores of restored vs ground-truth crops: ``values[column]`` ``(N,)`` float arrays (NaN where
    not computable), both landmark sets ``(N, P, 2)`` in pixels of a 512 crop and the scheme that produced them."""

    values: dict[str, np.ndarray]
    pred_landmarks: np.ndarray
    gt_landmarks: np.ndarray
    scheme: str

    @property
    def landmarks_found(self) -> np.ndarray:
        return ~(np.isnan(self.pred_landmarks).any(axis=(1, 2)) | np.isnan(self.gt_landmarks).any(axis=(1, 2)))


def score_crops(restored, gt, landmark_detector, encoder=None, reference_embeddings=None, lpips=None,
                dists=None, no_reference: Sequence[Any] = ()) -> CropScores:
    """Score aligned crops ``(N, S, S, 3)`` in [0, 1]: PSNR, SSIM, [LPIPS], [DISTS], [MUSIQ, C-IQA, M-IQA of the
    restored crops], [Deg., Ref-Deg], L2-LD, ALD, ALD-e, ALD-m, and the hypothesis columns ALD-e / ALD-m sum.

    Args:
        restored, gt: equally shaped crop batches (S is rescaled to 512 for the landmark metrics).
        landmark_detector: a :class:`honestface_core.face.landmarks.LandmarkDetector`.
        encoder: optional identity encoder for Deg. (and Ref-Deg with ``reference_embeddings``).
        reference_embeddings: ``(K, D)`` embeddings for every face, or a list of N such tensors (one per face;
            None or empty entries give NaN), from the same ``encoder``.
        lpips: optional :class:`honestface_core.metrics.image_quality.LPIPSMetric`.
        dists: optional :class:`honestface_core.metrics.image_quality.DISTSMetric`.
        no_reference: loaded no-reference metrics (:mod:`honestface_core.metrics.no_reference`), each giving the
            column named by its ``name``.
    """
    from honestface_core.metrics.identity_metrics import deg, ref_deg
    from honestface_core.metrics.image_quality import psnr_y, ssim_y
    from honestface_core.metrics.landmark_distance import landmark_distances

    n = restored.shape[0]
    if gt.shape != restored.shape:
        raise HonestFaceError("images", f"restored {tuple(restored.shape)} and ground truth {tuple(gt.shape)} differ",
                              "Pass one ground-truth image per restored image, of the same size")
    values: dict[str, np.ndarray] = {"PSNR": psnr_y(restored, gt).numpy(), "SSIM": ssim_y(restored, gt).numpy()}
    if lpips is not None:
        values["LPIPS"] = lpips(restored, gt).numpy()
    if dists is not None:
        values["DISTS"] = dists(restored, gt).numpy()
    for metric in no_reference:
        values[metric.name] = metric(restored).numpy()
    lp, lg = landmark_detector.detect(restored), landmark_detector.detect(gt)
    dist = landmark_distances(lp.points, lg.points, landmark_detector.scheme, image_size=restored.shape[1])
    values.update({col: np.asarray(dist[key], float) for key, col in _LANDMARK_KEYS.items()})
    if encoder is not None:
        er, eg = encoder.embed(restored), encoder.embed(gt)
        values["Deg."] = deg(er, eg).double().cpu().numpy()
        if reference_embeddings is not None:
            refs = reference_embeddings if isinstance(reference_embeddings, (list, tuple)) else [reference_embeddings] * n
            values["Ref-Deg"] = np.array([ref_deg(er[i:i + 1], r.to(er.device))[0].item() if r is not None and len(r) else np.nan
                                          for i, r in enumerate(refs)], float)
    scale = EVAL_SIZE / restored.shape[1]
    return CropScores(values, lp.points * scale, lg.points * scale, landmark_detector.scheme)


def nanmean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN when there is none)."""
    arr = np.asarray([v for v in values if v is not None], float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")
