"""Image loading/validation and tensor conversions on real and deliberately broken files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from honestface_core.errors import HonestFaceError
from honestface_core.images import as_rgb_batch, load_image, tensor_to_uint8, uint8_to_tensor


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
