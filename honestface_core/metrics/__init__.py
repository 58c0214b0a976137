"""Evaluation metrics: landmark distances (L2-LD; our ALD, ALD-e, ALD-m; the ALD sum hypothesis), Deg / Ref-Deg,
image metrics (FID as pytorch-fid computes it in :mod:`.fid`), and the dataset evaluation behind
``honestface evaluate``. Importing this package loads numpy only (``deg`` / ``ref_deg`` load torch on first use)."""

from honestface_core.metrics.landmark_distance import apply_affine, fit_affine, landmark_distances, rescale_landmarks
from honestface_core.metrics.schemes import SCHEMES, LandmarkScheme, get_scheme

__all__ = ["landmark_distances", "fit_affine", "apply_affine", "rescale_landmarks", "SCHEMES", "LandmarkScheme",
           "get_scheme", "deg", "ref_deg"]


def __getattr__(name: str):
    if name in ("deg", "ref_deg"):
        from honestface_core.metrics import identity_metrics

        return getattr(identity_metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
