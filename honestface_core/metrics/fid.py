"""FID as pytorch-fid computes it: its Inception network (the TensorFlow FID graph's Inception-v3), its weight file
``pt_inception-2015-12-05-6726825d.pth``, its input path and its Fréchet statistics (docs/evaluation.md, "FID").

Input path (pytorch-fid's): RGB in [0, 1] (``uint8 / 255`` for image files) resized to 299x299 bilinearly
(``align_corners=False``, no antialiasing), mapped to [-1, 1]; the 2048-d features are the final average pool.
The network is in :mod:`.fid_inception` (imported only when the file is found). The file is never downloaded: it is
looked for in ``<models>/fid/`` (our choice of folder) and in torch's checkpoint cache, where pytorch-fid keeps its
own download.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from honestface_core.errors import HonestFaceError
from honestface_core.files.weight_files import load_weights, read_state_dict

FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_SIZE = 299
#: modules of the network, in order, up to the 2048-d pool features (the classifier is not run)
_LAYERS = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
           "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
           "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool")


def fid_weight_candidates(models_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where :data:`FID_FILE` is looked for: ``<models>/fid/``, then torch's checkpoint cache (pytorch-fid's)."""
    from honestface_core.metrics.image_quality import torch_checkpoints_dir

    return ([Path(models_dir) / "fid" / FID_FILE] if models_dir else []) + [torch_checkpoints_dir() / FID_FILE]


class FIDInceptionFeatures:
    """pytorch-fid's 2048-d Inception pool features of ``(B, H, W, 3)`` [0, 1] images, from a local weight file."""

    def __init__(self, models_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 path: str | os.PathLike | None = None):
        from honestface_core.metrics.image_quality import MetricUnavailable

        candidates = [Path(path)] if path else fid_weight_candidates(models_dir)
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise MetricUnavailable(f"FID skipped: weight file {FID_FILE} (pytorch-fid's Inception) missing, put it in "
                                    + " or ".join(f"'{p.parent}'" for p in candidates))
        from honestface_core.metrics.fid_inception import fid_inception_v3  # torchvision: only when FID runs

        net = fid_inception_v3()
        what = f"pytorch-fid's Inception ({FID_FILE})"
        load_weights(net, read_state_dict(found, what), found, what)
        self.net = net.eval().requires_grad_(False).to(device)
        self.path = found

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """``(B, 2048)`` float64 array of the float32 features."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[-1] != 3:
            raise HonestFaceError("FID images", f"expected (B, H, W, 3), got {getattr(images, 'shape', type(images))}",
                                  "Pass ComfyUI-style IMAGE batches")
        dev = next(self.net.parameters()).device
        # contiguous NCHW as pytorch-fid's ToTensor gives: a channels-last view runs other conv kernels (measured:
        # features 6e-5 apart, FID 4e-7 relative)
        x = images.permute(0, 3, 1, 2).to(dev, torch.float32).contiguous()
        x = F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for name in _LAYERS:
            x = getattr(self.net, name)(x)
        return x.flatten(1).double().cpu().numpy()


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` (N >= 2 each), with pytorch-fid's
    statistics: ``np.cov`` (N - 1), ``scipy.linalg.sqrtm`` of the covariance product, 1e-6 added to both diagonals
    when that square root is not finite, its real part. Means and covariances in float64 (pytorch-fid averages in
    float32: a difference of about 1e-7 relative)."""
    from scipy import linalg

    if len(feats_a) < 2 or len(feats_b) < 2:
        raise HonestFaceError("FID", "needs at least 2 images in each set", "Evaluate a larger set")
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    diff = mu1 - mu2
    fid = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))
    return max(0.0, fid)  # round-off can make identical sets a hair below 0
