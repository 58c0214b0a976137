"""Paste-back: identity round trip on real photos, several faces per image, batches, masks, colour correction."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from honestface_core.face import alignment, pasteback
from honestface_core.face.alignment import align_faces
from honestface_core.face.detection import YuNetDetector, detect_faces
from honestface_core.errors import HonestFaceError
from honestface_core.files.images import uint8_to_tensor
from honestface_core.face.parsing import feathered_mask, region_mask
from honestface_core.face.pasteback import color_correct, paste_back, paste_faces


@pytest.fixture(scope="module")
def group(yunet_path, group_photo, astronaut):
    import cv2

    det = YuNetDetector(yunet_path)
    x = uint8_to_tensor([group_photo, cv2.resize(astronaut, group_photo.shape[1::-1])])
    faces = detect_faces(det, x)
    return x, align_faces(x, faces)


def test_unchanged_crops_paste_back_to_the_same_image(group):
    x, al = group
    assert len(al) == 7 and al.image_index.tolist() == [0] * 6 + [1]
    before = x.clone()
    out = paste_back(x, al.crops, al.matrices, al.image_index)
    assert torch.equal(x, before)  # inputs untouched
    diff = (out - x).abs().amax(-1) * 255
    # where every (image-space) mask is 0 the pixels are bit-identical
    ones = torch.ones(len(al), 512, 512, 3)
    support = paste_back(torch.zeros_like(x), ones, al.matrices, al.image_index).amax(-1) > 0
    assert diff[~support].max() == 0
    # inside: two bicubic resamplings (OpenCV on CPU). Measured (largest channel change, grey levels): mean 0.215,
    # 99th percentile 1.45; the grid_sample path (the one before OpenCV, and on GPUs) 0.223 and 1.55
    assert diff[support].mean() < 0.25 and diff[support].quantile(0.99) < 1.8


def test_faces_composite_in_order_and_batch(group):
    x, al = group
    red = torch.zeros_like(al.crops)
    red[..., 0] = 1
    red[1, ..., 1] = 1  # face 1 is yellow
    m = torch.ones(len(al), 512, 512)
    out = paste_back(x, red, al.matrices, al.image_index, masks=m)
    for i in range(len(al)):
        cx, cy = (al.faces[i].kps[2]).round().astype(int)  # nose
        b = int(al.image_index[i])
        assert torch.allclose(out[b, cy, cx], red[i, 0, 0], atol=1e-5)
    # swapping the order of two overlapping faces changes who wins; here just check reversal keeps non-overlaps
    rev = torch.arange(len(al) - 1, -1, -1)
    out2 = paste_back(x, red[rev], al.matrices[rev], al.image_index[rev], masks=m)
    cx, cy = al.faces[1].kps[2].round().astype(int)
    assert torch.allclose(out2[0, cy, cx], red[1, 0, 0], atol=1e-5)
    assert torch.equal(paste_back(x, red[:0], al.matrices[:0], al.image_index[:0]), x)


def test_color_correction_moves_statistics_toward_reference(group):
    x, al = group
    ref = al.crops[:3]
    shifted = (ref * 0.7 + torch.tensor([0.25, 0.0, 0.1])).clamp(0, 1)  # a colour cast and contrast loss
    for mode in ("adain", "wavelet"):
        fixed = color_correct(shifted, ref, mode)
        for stat in (lambda t: t.mean((1, 2)), lambda t: t.std((1, 2))):
            assert (stat(fixed) - stat(ref)).abs().mean() < 0.5 * (stat(shifted) - stat(ref)).abs().mean(), mode
        out = paste_back(x, shifted, al.matrices[:3], al.image_index[:3], color_correction=mode, reference_crops=ref)
        assert out.shape == x.shape
    # wavelet keeps the restored crop's fine detail: its high-pass part is unchanged
    noisy = (ref + 0.05 * torch.randn_like(ref, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    w = color_correct(noisy, ref, "wavelet")
    assert ((w - ref).std() > 0.6 * (noisy - ref).std())
    with pytest.raises(HonestFaceError, match="reference"):
        paste_back(x, shifted, al.matrices[:3], al.image_index[:3], color_correction="adain")
    with pytest.raises(HonestFaceError, match="unknown"):
        color_correct(shifted, ref, "histogram")


@pytest.mark.parametrize("opencv", [True, False], ids=["opencv", "device_path"])
def test_strength_and_the_mask_of_the_pasted_faces(group, opencv, monkeypatch):
    """Strength 0 returns the input bit for bit, 1 the plain paste-back; the mask is 0 exactly where nothing
    changed, and for one face it is the blend weight: out = input + mask * (face - input)."""
    for module in (alignment, pasteback):
        monkeypatch.setattr(module, "uses_opencv", lambda t: opencv)
    x, al = group
    red = torch.zeros_like(al.crops)
    red[..., 0] = 1
    args = (x, red, al.matrices, al.image_index)
    zero = paste_faces(*args, strength=0.0)
    assert torch.equal(zero.images, x) and zero.mask.max() == 0
    full = paste_faces(*args)
    assert torch.equal(full.images, paste_back(*args)) and full.mask.shape == x.shape[:3]
    changed = (full.images != x).any(-1)
    assert not (changed & (full.mask == 0)).any() and changed[full.mask > 1e-3].all()  # red differs from the photos
    assert 0.99 < full.mask.max() <= 1 and full.mask.min() == 0
    one = paste_faces(x, red[6:], al.matrices[6:], al.image_index[6:])  # the astronaut's one face
    expect = x + one.mask[..., None] * (torch.tensor([1.0, 0, 0]) - x)
    # the warped red crop is red up to the bicubic weights' float32 rounding (measured 2e-5 with OpenCV)
    assert (one.images - expect).abs().max() < 1e-4
    one_half = paste_faces(x, red[6:], al.matrices[6:], al.image_index[6:], strength=0.5)
    assert torch.equal(one_half.mask, 0.5 * one.mask)
    assert ((one_half.images - x) - 0.5 * (one.images - x)).abs().max() < 1e-6
    for bad in (-0.1, 1.5):
        with pytest.raises(HonestFaceError, match="strength"):
            paste_back(*args, strength=bad)


def test_masks():
    m = feathered_mask(64, 2)
    assert m.shape == (2, 64, 64) and m[:, 0].max() == 0 and m[:, :, -1].max() == 0 and m[0, 32, 32] == 1
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[:, 20:44, 20:44] = 1  # skin
    labels[:, :10] = 17  # hair
    soft = region_mask(labels, feather=0.05)
    assert soft[0, 32, 32] > 0.99 and soft[0, 5, 32] < 0.01 and soft[0, 0].max() == 0


HOST_READS = {"numpy", "__array__", "tolist", "item", "cpu", "__bool__", "__int__", "__float__", "__index__", "nonzero",
              "unique", "linalg_inv"}
"""Tensor calls that read values back to the host: on a GPU each one waits for all queued work."""


class HostReads(TorchFunctionMode):
    """Counts host reads (``HOST_READS`` and ``.to()`` towards the CPU) of every tensor call in the block."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        targets = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
        if name in HOST_READS or (name == "to" and any(torch.device(a).type == "cpu" for a in targets)):
            self.calls.append(name)
        return func(*args, **kwargs)


@pytest.fixture
def device_path(monkeypatch):
    """Run the grid_sample path (the one GPUs take) on this CPU."""
    for module in (alignment, pasteback):
        monkeypatch.setattr(module, "uses_opencv", lambda t: False)


def test_no_host_read_per_face_on_the_device_path(group, device_path):
    """Alignment + paste-back of 7 or 28 faces read the same few values back to the host: none per face."""
    x, al = group

    def reads(copies: int, size: int) -> list[str]:
        with HostReads() as mode:
            a = align_faces(x, al.faces * copies, size)
            out = paste_back(x, a.crops, a.matrices, a.image_index)
        assert len(a) == 7 * copies and not torch.equal(out, x)
        return mode.calls

    # 512: direct warps, paste-back shrinks the crops (small faces); 64: alignment shrinks the faces first
    for size in (512, 64):
        few, many = reads(1, size), reads(4, size)
        assert few == many, (size, few, many)
        assert len(few) <= 8, few  # per call: the NaN check of each image, matrices and indices once


def test_opencv_and_device_paths_agree(group, device_path):
    """The CPU (OpenCV) and device (grid_sample) paths make the same crops and the same round trip."""
    x, al = group  # made on the OpenCV path (CPU float32)
    dev = align_faces(x, al.faces)
    diff = (al.crops - dev.crops).abs() * 255
    # measured: mean 0.060, largest 2.1 grey levels (OpenCV rounds sample positions to 1/32 pixel)
    assert diff.mean() < 0.1 and diff.amax() < 4
    torch.testing.assert_close(al.matrices, dev.matrices, atol=0, rtol=0)
    out = paste_back(x, dev.crops, dev.matrices, dev.image_index)
    support = paste_back(torch.zeros_like(x), torch.ones_like(al.crops), al.matrices, al.image_index).amax(-1) > 0
    change = (out - x).abs().amax(-1) * 255
    assert change[~support].max() == 0 and change[support].mean() < 0.25  # measured 0.223


def test_bench_pasteback_runs_both_sides(tmp_path, capsys):
    """``honestface bench-pasteback`` times ours and facexlib's helper on the same landmarks and reports the round trip."""
    import json

    from honestface_core.cli.main import main

    report = tmp_path / "bench.json"
    assert main(["bench-pasteback", "--sizes", "0.5", "--faces", "6", "--threads", "1", "--repeats", "1",
                 "--json", str(report)]) == 0
    (row,) = json.loads(report.read_text())["rows"]
    assert row["faces"] == 6 and abs(row["megapixels"] - 0.5) < 0.01 and row["ours_s"] > 0 and row["facexlib_s"] > 0
    assert row["outside_max"] == 0 and row["inside_mean"] < 0.25  # measured 0.214
    assert "load average" in capsys.readouterr().out
    assert main(["bench-pasteback", "--json", str(report)]) == 2  # never overwrites a report
