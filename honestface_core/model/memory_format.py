"""How the full-resolution convolution stacks run on CPU: memory layout and batch slicing.

oneDNN (torch's CPU convolution backend) computes in a channels-last layout: NCHW inputs are reordered before and
after every convolution, which took about half the time of the VRE encoder and the VAE decoder in bf16 on a Xeon
(measured with ``torch.profiler``; a 2-3x speed-up channels-last). Our choice: channels-last on CPU only (CUDA is
left as it was). Same math; float rounding may differ in the last bits.

On CPU the 512-pixel convolution stacks (VAE encoder and decoder, VRE encoder) also cost more per image in a batch
than one image at a time (4 faces in one batch vs 4 single images, process CPU time, best of 4 interleaved runs,
bf16, one thread: VAE decode 22.9 vs 21.2 s, VAE encode 11.3 vs 10.9 s, VRE 3.2 vs 2.8 s), and their activations
(hundreds of MiB per image) make peak memory grow with the batch. Our choice: on CPU they run
one image at a time; the UNet (64x64 latents), which does gain from batching, stays batched. GPUs run whole batches.
"""

from __future__ import annotations

from typing import Callable

import torch


def cpu_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout when it is a 4-D CPU tensor, else unchanged."""
    if x.device.type == "cpu" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def per_image_on_cpu(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` computed one image at a time and concatenated when ``x`` is on the CPU; one call elsewhere."""
    if x.device.type != "cpu" or x.shape[0] <= 1:
        return fn(x)
    return torch.cat([fn(x[i:i + 1]) for i in range(x.shape[0])])
