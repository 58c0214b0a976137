"""``honestface bench --flops``: FLOP counts that match the textbook formulas (CPU flash attention included) and the
report's GFLOP columns."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from honestface_core.cli.bench_flops import count_flops, matmul_rate
from honestface_core.cli.main import main


def test_counts_match_the_formulas():
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 10, 12)
    assert count_flops(lambda: conv(x)) == 2 * 2 * 16 * 10 * 12 * 8 * 9
    b, h, s, d = 2, 3, 40, 16
    q, k, v = (torch.randn(b, h, s, d) for _ in range(3))
    with torch.inference_mode():  # the CPU flash kernel, which torch's counter has no formula for
        assert count_flops(lambda: F.scaled_dot_product_attention(q, k, v)) == 2 * (2 * b * h * s * s * d)


def test_matmul_rate_is_a_rate():
    rate = matmul_rate(torch.device("cpu"), torch.float32, size=128, repeats=2)
    assert 1e6 < rate < 1e14


def test_bench_flops_columns(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--size", "tiny", "--faces", "1,2", "--device", "cpu", "--dtype", "fp32", "--threads", "1",
                 "--repeats", "1", "--warmup", "0", "--flops", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    one, two = report["runs"]
    for stage in ("VRE", "LQ backbone + embedders + fusion", "VAE encode", "UNet", "VAE decode"):
        assert one["stages"][stage]["gflop"] > 0
        # the work of 2 faces is twice that of one (batching saves time, not work)
        assert abs(two["stages"][stage]["gflop"] / one["stages"][stage]["gflop"] - 2) < 1e-6
    assert "gflop" not in one["stages"]["align"] and report["matmul_gflops"] > 0
    table = capsys.readouterr().out
    assert "| GFLOP per face | GFLOP/s at 1 | GFLOP/s at 2 |" in table and "matrix product runs at" in table
