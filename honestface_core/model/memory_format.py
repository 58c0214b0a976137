"""How the full-resolution convolution stacks run on CPU: memory layout and batch chunks.

oneDNN (torch's CPU convolution backend) computes in a channels-last layout: NCHW inputs are reordered before and
after every convolution, which took about half the time of the VRE encoder and the VAE decoder in bf16 on a Xeon
(measured with ``torch.profiler``; a 2-3x speed-up channels-last). Our choice: channels-last on CPU only (CUDA is
left as it was). Same math; float rounding may differ in the last bits.

Batching the 512-pixel stacks (VAE encoder and decoder, VRE encoder) on CPU depends on the thread count (process
CPU time, bf16, random weights at the real size, 4 images in one batch vs 4 single images, interleaved, paired):
- several torch threads (torch's default): a batch is cheaper, fewer OpenMP synchronisations per image, and on a
  busy machine every synchronisation waits for a descheduled thread (AMD EPYC, 2 threads, load 6-10: VAE decode
  0.877-0.899x, VAE encode 0.824-0.888x, VRE 0.524-0.537x);
- one thread: a batch costs a little more per image (AMD EPYC: VAE decode 1.02-1.06x, VRE 1.01-1.10x; Xeon: VAE
  decode 22.9 vs 21.2 s, encode 11.3 vs 10.9 s, VRE 3.2 vs 2.8 s), nothing to synchronise and worse cache reuse.
Our choice: with several threads they run in batches, chunked so that the activations fit in memory; with one thread
one image at a time. The UNet (64x64 latents) gains from batching either way and stays batched. GPUs run whole
batches (the pipeline halves the batch on out-of-memory).

Memory: each extra image in a VAE-decoder batch at 512 px held about 340 MiB more at the peak (resident memory,
bf16: 4723 vs 3699 MiB for 4 images vs 1), i.e. about 1300 bytes per output pixel in bf16. Our choice: a chunk
holds at most as many images as fit in half of the memory the OS reports available (``MemAvailable``), counting
:data:`ACTIVATION_BYTES_PER_PIXEL` per output pixel scaled by the element size (2 for bf16 / fp16).
"""

from __future__ import annotations

from typing import Callable

import torch

#: peak activation bytes per output pixel of one image in bf16 (the VAE decoder's, the largest of the three stacks)
ACTIVATION_BYTES_PER_PIXEL = 1400
#: share of the available memory a chunk's activations may take
MEMORY_SHARE = 0.5


def cpu_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout when it is a 4-D CPU tensor, else unchanged."""
    if x.device.type == "cpu" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def available_memory() -> int | None:
    """Bytes the OS reports available (``MemAvailable`` of ``/proc/meminfo``), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_chunk_size(x: torch.Tensor, output_pixels: int, threads: int | None = None,
                   available: int | None = None) -> int:
    """Images per call of a 512-px convolution stack on CPU (see the module docstring): 1 with one thread, else
    as many as the memory allows (at least 1, at most the batch). ``threads`` / ``available``: the current ones
    when None."""
    threads = torch.get_num_threads() if threads is None else threads
    if threads <= 1 or x.shape[0] <= 1:
        return 1
    available = available_memory() if available is None else available
    if available is None:
        return x.shape[0]
    per_image = ACTIVATION_BYTES_PER_PIXEL * x.element_size() / 2 * output_pixels
    return max(1, min(x.shape[0], int(MEMORY_SHARE * available // per_image)))


def cpu_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, output_pixels: int) -> torch.Tensor:
    """``fn(x)``: in one call off the CPU; on the CPU in chunks of :func:`cpu_chunk_size` images, concatenated.
    ``output_pixels``: pixels per image at the stack's full resolution (e.g. 512 * 512)."""
    if x.device.type != "cpu" or x.shape[0] <= 1:
        return fn(x)
    size = cpu_chunk_size(x, output_pixels)
    if size >= x.shape[0]:
        return fn(x)
    return torch.cat([fn(x[i:i + size]) for i in range(0, x.shape[0], size)])
