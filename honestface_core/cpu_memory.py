"""Keep freed CPU memory for reuse (glibc's malloc): fewer page faults for the large activations of the
512-pixel convolution stacks.

glibc hands every allocation above its mmap threshold (at most 32 MiB by default) back to the OS when it is freed,
so each VAE / VRE activation at 512 px (tens to hundreds of MiB) is page-faulted and zeroed again on every call:
system time was about 20 % of the CPU time of restoring 4 faces (bf16, one thread). Raising the mmap and trim
thresholds keeps freed memory in the heap for the next call (system time then about 0). Our choice: the
``honestface`` command does this for its own process on Linux with glibc; the ComfyUI nodes do not (ComfyUI's
process is not ours to tune; the README gives the equivalent environment variables).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt parameters (malloc.h)
SETTINGS = ((M_MMAP_THRESHOLD, 2**31 - 1), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 2**30))
ENVIRONMENT = "MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=1073741824"
"""The same settings as glibc environment variables (for a process started by someone else, e.g. ComfyUI)."""


def keep_freed_memory() -> bool:
    """Tune glibc's malloc of this process as above; False (nothing changed) where the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(option, value) == 1 for option, value in SETTINGS)


__all__ = ["ENVIRONMENT", "keep_freed_memory"]
