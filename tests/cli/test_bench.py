"""``honestface bench`` end to end at the tiny size: the report's fields, the table, the JSON file, bad options."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from honestface_core.cli.bench import paired
from honestface_core.cli.main import main


def test_tiny_bench_reports_every_stage_and_both_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--size", "tiny", "--faces", "1,2", "--device", "cpu", "--dtype", "fp32", "--threads", "1",
                 "--repeats", "2", "--warmup", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["faces"] for r in report["runs"]] == [1, 2] and report["repeats"] == 2 and report["threads"] == 1
    for r in report["runs"]:
        for name in ("align", "VRE", "VAE encode", "UNet", "VAE decode", "paste-back"):
            assert r["stages"][name]["cpu_seconds"] > 0 and r["stages"][name]["peak_mib"] > 0
        for side in ("bare_vae_unet", "restore_crops"):
            m = r[side]
            assert 0 < m["best_cpu_seconds"] <= m["cpu_seconds"] and 0 < m["best_seconds"] <= m["seconds"]
        assert r["overhead"] == pytest.approx(r["restore_crops"]["cpu_seconds"] / r["bare_vae_unet"]["cpu_seconds"] - 1)
        assert r["overhead_of_best"] == pytest.approx(r["restore_crops"]["best_cpu_seconds"]
                                                      / r["bare_vae_unet"]["best_cpu_seconds"] - 1)
        assert r["per_face_one_call"] == pytest.approx(r["restore_crops"]["cpu_seconds"] / r["faces"])
        extra = sum(r["stages"][s]["cpu_seconds"] for s in ("VRE", "LQ backbone + embedders + fusion"))
        assert r["overhead_of_stages"] == pytest.approx(extra / sum(r["stages"][s]["cpu_seconds"] for s in
                                                                     ("VAE encode", "UNet", "VAE decode")))
    one, two = report["runs"]
    assert "per_face_single_calls" not in one and "one_call_vs_single_calls" not in one
    assert two["per_face_single_calls"] == pytest.approx(two["single_calls"]["cpu_seconds"] / 2)
    pairs = [a / b for a, b in zip(two["restore_crops"]["each_cpu_seconds"], two["single_calls"]["each_cpu_seconds"])]
    assert two["one_call_vs_single_calls"] == pytest.approx(statistics.median(pairs))
    assert two["batching_paired"]["each"] == pytest.approx(pairs) and two["batching_paired"]["min"] == min(pairs)
    for r in report["runs"]:
        over = [a / b for a, b in zip(r["restore_crops"]["each_cpu_seconds"], r["bare_vae_unet"]["each_cpu_seconds"])]
        assert r["overhead_paired"]["each"] == pytest.approx(over) and r["overhead_paired"]["max"] == max(over)
        assert r["overhead_paired"]["conclusive"] is False  # 2 repeats never settle a target
    assert report["cpu"] and len(report["load_average"]["start"]) == 3 and len(report["warnings"]) == 3
    table = capsys.readouterr().out
    assert "| VAE decode |" in table and "best of 2" in table and "overhead (stage sums)" in table
    assert "one call / single calls, paired: median [min..max]" in table and "load average" in table
    assert table.count("WARNING: ") == 3 and "only 2 repeat(s)" in table and report["cpu"] in table
    before = out.read_bytes()
    assert main(["bench", "--size", "tiny", "--faces", "1", "--json", str(out)]) == 2
    assert "already exists and is not overwritten" in capsys.readouterr().err and out.read_bytes() == before


@pytest.mark.parametrize("ratios, target, verdict", [([0.80, 0.84, 0.83], 1.0, "below"),
                                                     ([1.2, 1.3, 1.25], 1.15, "above"), ([0.9, 1.05, 0.95], 1.0, None)])
def test_paired_ratios_conclude_only_when_every_repeat_agrees(ratios, target, verdict):
    warnings = []
    r = paired(ratios, target, "x", warnings)
    assert r["median"] == statistics.median(ratios) and (r["min"], r["max"]) == (min(ratios), max(ratios))
    assert r["verdict"] == verdict and r["conclusive"] == (verdict is not None)
    assert len(warnings) == (verdict is None) and all("contains the target" in w for w in warnings)


@pytest.mark.parametrize("args, match", [(["--faces", "0"], "--faces"), (["--faces", "a"], "--faces"),
                                         (["--refs", "0"], "--refs"), (["--threads", "-1"], "--threads")])
def test_bad_bench_options(args, match, capsys):
    assert main(["bench", "--size", "tiny", *args]) == 2
    assert f"error: {match}" in capsys.readouterr().err


def test_peak_rss_sees_a_temporary_allocation():
    """In a fresh process (this one may keep freed memory resident, see cpu_memory.py)."""
    code = ("import torch; from honestface_core.cli.bench import PeakRSS\n"
            "with PeakRSS() as quiet: pass\n"
            "with PeakRSS() as busy:\n    x = torch.ones(64, 2**20); del x\n"
            "print(busy.peak - quiet.peak, quiet.peak - PeakRSS.rss_mib())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    grew, quiet = float(out[0]), float(out[1])
    assert grew > 200 and abs(quiet) < 50  # 256 MiB written inside the block
