"""Image loading/validation and tensor conversions on real and deliberately broken files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from honestface_core.errors import HonestFaceError
from honestface_core.files.images import as_rgb_batch, load_image, tensor_to_uint8, uint8_to_tensor


def test_load_real_photo(photos_dir):
    img = load_image(photos_dir / "obama.jpg")
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) > 100


def test_grayscale_rgba_and_16bit_png(tmp_path, astronaut):
    gray = astronaut.mean(-1).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (*gray.shape, 3) and np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 2], gray)

    rgba = np.dstack([astronaut, np.full(gray.shape, 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # transparent corner -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == astronaut.shape
    assert np.array_equal(out[20:], astronaut[20:]) and (out[:10, :10] == 255).all()

    g16 = gray.astype(np.uint16) * 257  # exact 16-bit version of the 8-bit grey image
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert np.array_equal(load_image(tmp_path / "g16.png")[..., 1], gray)

    import cv2  # 48-bit RGB PNG (PIL cannot write one)
    cv2.imwrite(str(tmp_path / "rgb16.png"), (astronaut[..., ::-1].astype(np.uint16) * 257))
    assert np.abs(load_image(tmp_path / "rgb16.png").astype(int) - astronaut).max() <= 1


def test_bad_files_name_the_file(tmp_path, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "tiny.png")
    for name, word in (("truncated.jpg", "truncated"), ("garbage.png", ""), ("tiny.png", "1x1"), ("missing.png", "exist")):
        with pytest.raises(HonestFaceError) as e:
            load_image(tmp_path / name)
        assert name in str(e.value) and word in str(e.value)


def test_tensor_roundtrip_and_validation():
    arr = np.random.default_rng(0).integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    t = uint8_to_tensor(arr)
    assert t.shape == (2, 20, 24, 3) and t.dtype == torch.float32
    back = tensor_to_uint8(t)
    assert len(back) == 2 and all(np.array_equal(a, b) for a, b in zip(back, arr))
    assert uint8_to_tensor(list(arr)).shape == (2, 20, 24, 3)

    assert as_rgb_batch(torch.rand(1, 20, 20, 1), "x").shape == (1, 20, 20, 3)
    rgba = torch.rand(1, 20, 20, 4)
    assert torch.equal(as_rgb_batch(rgba, "x"), rgba[..., :3])
    with pytest.raises(HonestFaceError, match="my_input"):
        as_rgb_batch(torch.rand(1, 1, 1, 3), "my_input")
    with pytest.raises(HonestFaceError, match="my_input"):
        as_rgb_batch(np.zeros((20, 20, 3)), "my_input")


def _png_header_only(path, width: int, height: int):
    """A PNG whose header declares ``width`` x ``height`` RGB pixels but that holds two rows (a decompression bomb's
    header: decoding it would allocate the declared size)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress((b"\x00" + b"\x00" * 3 * width) * 2)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def test_decompression_bombs_are_refused_from_the_header(tmp_path, monkeypatch):
    from honestface_core.files.images import MAX_MEGAPIXELS_ENV, read_image_size

    monkeypatch.delenv(MAX_MEGAPIXELS_ENV, raising=False)
    _png_header_only(tmp_path / "bomb.png", 20000, 20000)  # above Pillow's own limit: PIL raises its own error
    _png_header_only(tmp_path / "big.png", 8000, 8000)  # 64 MP: below Pillow's limit, above ours (50 MP)
    for reader in (load_image, read_image_size):
        with pytest.raises(HonestFaceError) as e:
            reader(tmp_path / "bomb.png")
        assert "bomb.png" in str(e.value) and "400.0 megapixels" in str(e.value) and "limit of 50 megapixels" in str(e.value)
        with pytest.raises(HonestFaceError) as e:
            reader(tmp_path / "big.png")
        assert "big.png" in str(e.value) and "8000x8000 = 64.0 megapixels" in str(e.value)
        assert f"{MAX_MEGAPIXELS_ENV}=64" in str(e.value) and "limit of 50 megapixels" in str(e.value)
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "64")  # the documented way to raise the limit
    assert read_image_size(tmp_path / "big.png") == (8000, 8000)
    for bad in ("0", "-5", "nan", "lots"):
        monkeypatch.setenv(MAX_MEGAPIXELS_ENV, bad)
        with pytest.raises(HonestFaceError, match=f"{MAX_MEGAPIXELS_ENV}: '{bad}' is not a positive number"):
            read_image_size(tmp_path / "big.png")


def test_pixel_limit_applies_to_image_tensors(monkeypatch):
    from honestface_core.files.images import MAX_MEGAPIXELS_ENV

    image = torch.rand(2, 400, 300, 3)  # 0.12 megapixels per image
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "0.1")
    with pytest.raises(HonestFaceError, match=r"input 'photo': image is 300x400 = 0.1 megapixels, more than the limit "
                                              r"of 0.1 megapixels"):
        as_rgb_batch(image, "photo")
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "0.12")
    assert as_rgb_batch(image, "photo").shape == (2, 400, 300, 3)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_images_are_refused(tmp_path, bad):
    batch = torch.rand(3, 32, 32, 4)
    batch[2, 5, 7, 1] = bad
    with pytest.raises(HonestFaceError, match=r"input 'image': image 2 of the batch contains NaN or infinite values"):
        as_rgb_batch(batch, "image")
    alpha_only = torch.rand(1, 32, 32, 4)
    alpha_only[0, 0, 0, 3] = bad  # the alpha channel is dropped: nothing of it reaches the pipeline
    assert torch.isfinite(as_rgb_batch(alpha_only, "image")).all()

    gray = np.random.default_rng(0).random((40, 48), dtype=np.float32)  # a 32-bit float TIFF (PIL mode F)
    Image.fromarray(gray).save(tmp_path / "ok.tif")
    assert load_image(tmp_path / "ok.tif").shape == (40, 48, 3)
    gray[3, 4] = bad
    Image.fromarray(gray).save(tmp_path / "bad.tif")
    with pytest.raises(HonestFaceError, match=r"image file '.*bad.tif': has 1 NaN or infinite pixel value"):
        load_image(tmp_path / "bad.tif")
