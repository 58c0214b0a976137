"""CPU chunks of the 512-px convolution stacks: one image per call with one thread, memory-sized batches with more,
the same results either way."""

from __future__ import annotations

import pytest
import torch

from honestface_core.model import memory_format as mf
from honestface_core.model.config import HonestFaceConfig
from honestface_core.model.generator import OneStepGenerator

PX = 512 * 512
PER_IMAGE_BF16 = mf.ACTIVATION_BYTES_PER_PIXEL * PX  # bytes one 512-px image's activations take in bf16


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads, available, dtype, want", [
    (1, 10**12, torch.bfloat16, 1),                      # one thread: one image at a time
    (2, 10**12, torch.bfloat16, 6),                      # plenty of memory: the whole batch
    (2, 4 * PER_IMAGE_BF16, torch.bfloat16, 2),          # half of 4 images' worth -> 2 per chunk
    (2, 4 * PER_IMAGE_BF16, torch.float32, 1),           # fp32 takes twice as much
    (2, PER_IMAGE_BF16 // 10, torch.bfloat16, 1),        # never below one image
    (2, None, torch.bfloat16, 6),                        # unknown memory: the whole batch
])
def test_chunk_size(threads, available, dtype, want, monkeypatch):
    monkeypatch.setattr(mf, "available_memory", lambda: available)
    x = torch.zeros(6, 4, 64, 64, dtype=dtype)
    assert mf.cpu_chunk_size(x, PX, threads=threads) == want


def test_chunks_follow_the_size_and_concatenate_in_order(two_threads, monkeypatch):
    monkeypatch.setattr(mf, "available_memory", lambda: 4 * PER_IMAGE_BF16)
    seen = []

    def fn(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.shape[0])
        return t * 2

    x = torch.arange(5.0).view(5, 1, 1, 1).bfloat16()
    assert torch.equal(mf.cpu_chunks(fn, x, PX), x * 2) and seen == [2, 2, 1]
    seen.clear()
    torch.set_num_threads(1)
    assert torch.equal(mf.cpu_chunks(fn, x, PX), x * 2) and seen == [1] * 5


def test_vae_batched_equals_one_at_a_time(two_threads):
    """The tiny SD-shaped VAE: two threads (one batch) and one thread (one image per call) agree."""
    torch.manual_seed(0)
    gen = OneStepGenerator(HonestFaceConfig.tiny().generator).eval()
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        z2 = gen.encode(images)
        x2 = gen.decode(z2)
        torch.set_num_threads(1)
        z1 = gen.encode(images)
        x1 = gen.decode(z1)
    # float32 sums in another order (batch, thread count): measured up to 1.4e-5 apart on outputs in [-1, 1]
    torch.testing.assert_close(z2, z1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x2, x1, rtol=1e-4, atol=1e-4)
