"""The `honestface` command's malloc tuning: freed large CPU tensors are reused without new page faults."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from honestface_core.cpu_memory import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")
def test_freed_memory_is_reused_without_page_faults():
    assert keep_freed_memory()
    torch.ones(64, 2**20)  # 256 MiB, freed at once: grows the heap once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(64, 2**20)
    del x
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 2000, f"{faults} page faults for a reused 256 MiB block (65536 pages when returned to the OS)"
