"""Floating-point work of the bench's stages (``honestface bench --flops``): how much each stage computes and the rate
it runs at, beside the device's matrix-multiply rate. A stage that already runs near that rate with one face cannot
get much cheaper per face in a batch: this bounds what batching can save (docs/restore.md, "where the time goes").

FLOPs are counted by ``torch.utils.flop_counter`` (convolutions, matrix products; elementwise work, normalisations and
softmax are not counted), with the CPU flash-attention kernel counted by torch's own attention formula.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


#: kernels ``flop_counter`` has no formula for
CUSTOM_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flops}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (it runs once, for real)."""
    with FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int = 4096, repeats: int = 3) -> float:
    """FLOP/s of a ``size``-cubed matrix product in ``dtype`` on ``device``: the best of ``repeats`` wall times, after
    one untimed call."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    with torch.inference_mode():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


__all__ = ["count_flops", "matmul_rate"]
