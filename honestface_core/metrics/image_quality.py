"""Image metrics for restored vs ground-truth faces.

Always available: PSNR and SSIM on the Y channel (our implementation; conventions of the face-restoration
literature, our choice: ITU-R BT.601 luma ``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for RGB in [0, 1], data range
255, SSIM with an 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, mean over the valid region).

Only when their weight files are on disk (never downloaded): LPIPS (the ``lpips`` package, whose linear layers ship
in its wheel, plus torchvision's ImageNet AlexNet/VGG16 backbone file), DISTS (our implementation; torchvision's
VGG16 file plus the ``alpha``/``beta`` file ``weights.pt`` of ``DISTS_pytorch``). FID (pytorch-fid's network and
file) is in :mod:`.fid`, the no-reference metrics (MUSIQ, C-IQA, M-IQA) in :mod:`.no_reference`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from honestface_core.errors import HonestFaceError
from honestface_core.files.weight_files import read_state_dict
from honestface_core.metrics.vgg16 import VGG16_FILE, load_vgg16_features, vgg16_features, vgg16_taps

# torchvision ImageNet weight files, as torchvision names them in its download cache
TV_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": VGG16_FILE,
}


def torch_checkpoints_dir() -> Path:
    """torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where torchvision keeps ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weight_file(filename: str, models_dir: str | os.PathLike | None = None) -> Path | None:
    """``models_dir/torchvision/filename`` if given and present, else the torch hub checkpoint cache, else None."""
    candidates = ([Path(models_dir) / "torchvision" / filename] if models_dir else []) + [torch_checkpoints_dir() / filename]
    return next((p for p in candidates if p.is_file()), None)


def _check_pair(restored: torch.Tensor, gt: torch.Tensor) -> None:
    for name, t in (("restored", restored), ("ground truth", gt)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[-1] != 3:
            raise HonestFaceError(f"{name} images", f"expected (B, H, W, 3), got {getattr(t, 'shape', type(t))}",
                                  "Pass ComfyUI-style IMAGE batches")
    if restored.shape != gt.shape:
        raise HonestFaceError("images", f"restored {tuple(restored.shape)} and ground truth {tuple(gt.shape)} differ",
                              "Resize both to the same size (the evaluation uses 512x512 aligned crops)")


def rgb_to_y(images: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(B, H, W, 3)`` RGB in [0, 1] -> ``(B, H, W)`` BT.601 luma in [16, 235] (``dtype``)."""
    w = torch.tensor([65.481, 128.553, 24.966], dtype=dtype, device=images.device)
    return 16.0 + images.to(dtype) @ w


def psnr_y(restored: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """PSNR (dB) on the Y channel per image, data range 255 -> ``(B,)``; identical images give ``inf``."""
    _check_pair(restored, gt)
    mse = ((rgb_to_y(restored) - rgb_to_y(gt)) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur_valid(t: torch.Tensor, window: list[float]) -> torch.Tensor:
    """Separable blur of ``(..., H, W)`` maps over the valid region: one multiply-add per tap and axis on shifted
    views (the same sums, in the same order, as ``conv2d``; about 3x faster for such one-channel maps on a CPU)."""
    taps = len(window)
    for dim in (-1, -2):
        n = t.shape[dim] - taps + 1
        out = t.narrow(dim, 0, n) * window[0]
        for k in range(1, taps):
            out.add_(t.narrow(dim, k, n), alpha=window[k])
        t = out
    return t


def ssim_y(restored: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """SSIM on the Y channel per image (Gaussian 11x11, sigma 1.5, data range 255, valid region) -> ``(B,)`` float64.

    Computed in float32 (docs/evaluation.md, "Throughput"): each image's luma is centred on its own mean before the
    local second moments ``E[x^2] - E[x]^2`` are taken (they do not change under a constant shift), which keeps
    float32's cancellation error small: within 2e-6 of scikit-image's float64 SSIM, relative, on real photo pairs."""
    _check_pair(restored, gt)
    if min(restored.shape[1:3]) < 11:
        raise HonestFaceError("images", f"{restored.shape[2]}x{restored.shape[1]} is smaller than the 11x11 SSIM window",
                              "Evaluate images of at least 11x11 pixels")
    x, y = rgb_to_y(restored, torch.float32), rgb_to_y(gt, torch.float32)
    x_mean, y_mean = (t.double().mean((1, 2), keepdim=True).float() for t in (x, y))  # the same on any thread count
    xc, yc = x - x_mean, y - y_mean
    stats = _blur_valid(torch.stack([xc, yc, xc * xc, yc * yc, xc * yc]), _gaussian_window().tolist())
    mxc, myc, exx, eyy, exy = stats.unbind(0)
    vx, vy, cxy = exx - mxc * mxc, eyy - myc * myc, exy - mxc * myc
    mx, my = mxc + x_mean, myc + y_mean
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).double().mean(1)


class MetricUnavailable(RuntimeError):
    """An optional metric cannot run here; ``str(e)`` is the line to show ("skipped: ...")."""


@dataclass
class LPIPSMetric:
    """LPIPS v0.1 (``lpips`` package) with a local torchvision backbone file (``net`` = ``alex`` or ``vgg``)."""

    model: torch.nn.Module
    net: str

    @classmethod
    def load(cls, net: str = "alex", models_dir: str | os.PathLike | None = None,
             device: str | torch.device = "cpu") -> "LPIPSMetric":
        if net not in ("alex", "vgg"):
            raise HonestFaceError("LPIPS network", f"{net!r} is not supported", "Use 'alex' or 'vgg'")
        path = find_weight_file(TV_FILES[net], models_dir)
        if path is None:
            where = f"'{Path(models_dir) / 'torchvision'}' or '{torch_checkpoints_dir()}'" if models_dir else f"'{torch_checkpoints_dir()}'"
            raise MetricUnavailable(f"LPIPS skipped: weight file {TV_FILES[net]} missing, put it in {where}")
        try:  # only now: importing lpips costs seconds (docs/evaluation.md, "Throughput")
            import lpips
        except ImportError as err:
            raise MetricUnavailable("LPIPS skipped: the 'lpips' package is not installed (pip install lpips)") from err
        # pnet_rand=True: build the backbone without torchvision's download; its weights come from `path`
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
        state = read_state_dict(path, f"torchvision's {TV_FILES[net]}")
        for sl in (getattr(model.net, f"slice{k}") for k in range(1, model.net.N_slices + 1)):
            for idx, module in sl.named_children():
                for pname, _ in module.named_parameters(recurse=False):
                    key = f"features.{idx}.{pname}"
                    if key not in state:
                        raise HonestFaceError(f"'{path}'", f"has no '{key}'", f"Use torchvision's {TV_FILES[net]}")
                    getattr(module, pname).data.copy_(state[key])
        return cls(model.eval().to(device), net)

    @torch.no_grad()
    def __call__(self, restored: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """``(B,)`` LPIPS distances of two ``(B, H, W, 3)`` [0, 1] batches."""
        _check_pair(restored, gt)
        dev = next(self.model.parameters()).device
        a = restored.permute(0, 3, 1, 2).to(dev, torch.float32) * 2 - 1
        b = gt.permute(0, 3, 1, 2).to(dev, torch.float32) * 2 - 1
        return self.model(a, b).flatten().cpu().double()


#: DISTS's learned weights file: the ``weights.pt`` that ships in the ``DISTS_pytorch`` wheel (a dict with
#: ``alpha`` and ``beta``, each ``(1, 1475, 1, 1)``: one weight per channel of the image and the five VGG stages)
DISTS_FILE = "weights.pt"
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)


def dists_weight_candidates(models_dir: str | os.PathLike | None = None) -> list[Path]:
    """Where DISTS's ``weights.pt`` is looked for: ``models_dir/dists/`` (our choice of folder), then the copies an
    installed ``DISTS_pytorch`` package keeps (inside the package and in ``sys.prefix``); found without importing it."""
    import importlib.util
    import sys

    found = [Path(models_dir) / "dists" / DISTS_FILE] if models_dir else []
    spec = importlib.util.find_spec("DISTS_pytorch")
    if spec is not None and spec.submodule_search_locations:
        found += [Path(p) / DISTS_FILE for p in spec.submodule_search_locations] + [Path(sys.prefix) / DISTS_FILE]
    return found


class L2Pool(torch.nn.Module):
    """L2 pooling of DISTS: ``sqrt(hann3x3 * x^2)`` per channel with stride 2 (hann3x3 = outer([.5, 1, .5]), normalised)."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5])
        g = a[:, None] * a[None, :]
        self.register_buffer("kernel", (g / g.sum()).expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.kernel, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTSMetric(torch.nn.Module):
    """DISTS (Ding et al. 2020): structure and texture similarity of VGG16 features with L2 pooling, weighted by the
    learned ``alpha`` / ``beta``. Inputs are compared at their own size (our choice: no resize to 256)."""

    def __init__(self):
        super().__init__()
        self.features = vgg16_features(L2Pool)  # DISTS replaces VGG16's max pools by L2 pooling
        self.alpha = torch.nn.Parameter(torch.zeros(1, sum(DISTS_CHANNELS), 1, 1))
        self.beta = torch.nn.Parameter(torch.zeros(1, sum(DISTS_CHANNELS), 1, 1))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def load(cls, models_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             vgg_path: str | os.PathLike | None = None, weights_path: str | os.PathLike | None = None) -> "DISTSMetric":
        """Build from torchvision's ``vgg16-397923af.pth`` (``vgg_path``, else ``models_dir/torchvision/``, else torch's
        checkpoint cache) and DISTS's ``weights.pt`` (``weights_path``, else :func:`dists_weight_candidates`).

        Raises:
            MetricUnavailable: a file is missing (the message names it and where to put it).
            HonestFaceError: a file is there but is not in the expected format.
        """
        vgg = Path(vgg_path) if vgg_path else find_weight_file(TV_FILES["vgg"], models_dir)
        if vgg is None:
            where = [str(Path(models_dir) / "torchvision")] if models_dir else []
            raise MetricUnavailable(f"DISTS skipped: weight file {TV_FILES['vgg']} missing, put it in "
                                    + " or ".join(f"'{w}'" for w in where + [str(torch_checkpoints_dir())]))
        if not vgg.is_file():
            raise MetricUnavailable(f"DISTS skipped: weight file '{vgg}' (torchvision's {TV_FILES['vgg']}) not found")
        candidates = [Path(weights_path)] if weights_path else dists_weight_candidates(models_dir)
        ab = next((p for p in candidates if p.is_file()), None)
        if ab is None:
            where = " or ".join(f"'{p.parent}'" for p in candidates) or "'<models>/dists' (pass --models)"
            raise MetricUnavailable(f"DISTS skipped: weight file {DISTS_FILE} (DISTS alpha/beta, from the DISTS_pytorch "
                                    f"wheel or `pip install DISTS_pytorch`) missing, put it in {where}")
        model = cls()
        load_vgg16_features(model.features, vgg)
        w = read_state_dict(ab, f"DISTS's {DISTS_FILE}")
        shape = tuple(model.alpha.shape)
        if any(not isinstance(w.get(k), torch.Tensor) or tuple(w[k].shape) != shape for k in ("alpha", "beta")):
            raise HonestFaceError(f"'{ab}'", f"is not DISTS's weights.pt (needs tensors 'alpha' and 'beta' of shape {shape})",
                                  "Use weights.pt from the DISTS_pytorch package")
        model.alpha.copy_(w["alpha"])
        model.beta.copy_(w["beta"])
        return model.eval().to(device)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, *vgg16_taps(self.features, (x - self.mean) / self.std)]

    def distance(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B,)`` DISTS distances of two ``(B, 3, H, W)`` [0, 1] batches on this module's device, differentiable
        with respect to the inputs (the training loss uses it; the weights stay frozen)."""
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, DISTS_CHANNELS, dim=1)
        betas = torch.split(self.beta / total, DISTS_CHANNELS, dim=1)
        c = 1e-6
        sim = x.new_zeros(x.shape[0])
        for a, b, wa, wb in zip(self._stages(x), self._stages(y), alphas, betas):
            ma, mb = a.mean((2, 3), keepdim=True), b.mean((2, 3), keepdim=True)
            va, vb = ((a - ma) ** 2).mean((2, 3), keepdim=True), ((b - mb) ** 2).mean((2, 3), keepdim=True)
            cov = (a * b).mean((2, 3), keepdim=True) - ma * mb
            texture = (2 * ma * mb + c) / (ma ** 2 + mb ** 2 + c)
            structure = (2 * cov + c) / (va + vb + c)
            sim = sim + (wa * texture + wb * structure).sum((1, 2, 3))
        return 1 - sim

    @torch.no_grad()
    def forward(self, restored: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """``(B,)`` DISTS distances of two ``(B, H, W, 3)`` [0, 1] batches (0 for identical images)."""
        _check_pair(restored, gt)
        dev = self.alpha.device
        return self.distance(restored.permute(0, 3, 1, 2).to(dev, torch.float32),
                             gt.permute(0, 3, 1, 2).to(dev, torch.float32)).cpu().double()
