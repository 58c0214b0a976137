"""scripts/device_check.sh end to end on the CPU (``--dry-run``: tiny model, bf16, eager and compiled, one training
step), and its refusals."""

from __future__ import annotations

import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from honestface_core.cli import device_check

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_prints_every_part(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    before = sorted(p.name for p in ROOT.iterdir())
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "--dry-run"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600)
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device check on cpu" in out and "load average" in out
    for part in ("\n## bf16\n", "\n## bf16 + torch.compile\n", "\n## summary\n"):
        assert part in out
    warmup = re.search(r"torch.compile warm-up \(first 1-face restore\): ([0-9.]+) s", out)
    assert warmup and float(warmup.group(1)) > 0
    assert "| VAE decode |" in out and "one call / single calls, paired" in out
    rows = re.findall(r"^\| bfloat16 \| (on|off) \| [0-9.]* \| (\d+) \|", out, re.M)
    assert sorted(rows) == [("off", "1"), ("off", "2"), ("on", "1"), ("on", "2")]
    step = re.search(r"## one training step \(bf16 autocast, batch 2 x 2 accumulation, .*\): ([0-9.]+) s, peak "
                     r"([0-9]+) MiB, loss_g (\S+)", out)
    assert step, out[-2000:]
    assert float(step.group(1)) > 0 and int(step.group(2)) > 0 and math.isfinite(float(step.group(3)))
    assert "skipped" not in out and re.search(r"device check done in \d+ s", out)
    assert sorted(p.name for p in ROOT.iterdir()) == before and not list(tmp_path.iterdir())  # nothing written


def test_budget_skips_parts_and_says_so(capsys):
    assert device_check.main(["--dry-run", "--budget-s", "0"]) == 0
    out = capsys.readouterr().out
    assert "skipped (time budget of 0 s spent): bf16, bf16 + torch.compile, training step" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_real_check_refuses(capsys):
    assert device_check.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("faces", ["0", "a", ""])
def test_bad_face_counts(faces, capsys):
    with pytest.raises(SystemExit):
        device_check.parse_args(["--faces", faces])
    assert "not a list of positive face counts" in capsys.readouterr().err
