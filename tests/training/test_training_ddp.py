"""Two training processes on the tiny config: ``accelerate launch --multi_gpu --num_processes 2`` with
``ACCELERATE_USE_CPU=1`` (torchrun starts two CPU processes, Accelerate joins them with gloo; see
docs/training.md). Checks: both processes hold bit-identical weights at every checkpoint (each sends a digest of
its own weights to process 0), the two processes train on disjoint sample positions, process 0 alone writes each
checkpoint, and a run killed with SIGKILL and resumed under two processes ends with the same weights, optimiser
state, RNG states and logged losses as an uninterrupted one.

Data: the five real faces of tests/training/test_training_run.py (aligned with the real YuNet). Each run fits its own tiny
VAE for a few steps, so both runs build their model in the same way.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from training import checkpoint as ckpt  # noqa: E402
from training.config import config_to_dict, load_config  # noqa: E402

from test_training_data import make_identity_folder  # noqa: E402

STEPS, EVERY, BATCH = 5, 2, 2
CKPT_FILES = {"generator.safetensors", "vre.safetensors", "discriminator.safetensors", "optimizer_g.pt",
              "optimizer_d.pt", "scheduler_g.pt", "rng.pt", "state.json"}


def _two_processes_possible() -> str:
    """Why two gloo processes cannot start here ("" when they can)."""
    if not torch.distributed.is_available():
        return "this torch build has no torch.distributed"
    if not torch.distributed.is_gloo_available():
        return "this torch build has no gloo backend"
    return ""


pytestmark = pytest.mark.skipif(bool(_two_processes_possible()), reason=_two_processes_possible())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), str(REPO / "training" / "train.py"), *args]


ENV = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
       "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def cfg_path(tmp_path_factory, photos_dir, astronaut, yunet_path) -> Path:
    """tiny.yaml on the five real faces, overridden for a short run: the GAN from step 2 (D is trained under DDP
    too), a checkpoint every 2 steps (all kept), a tiny VAE fitted for 5 steps, no validation images."""
    root = make_identity_folder(tmp_path_factory.mktemp("ids"), photos_dir, astronaut, bad=False)
    cfg = load_config(REPO / "training" / "configs" / "tiny.yaml")
    cfg.data.datasets[0].root = str(root)
    cfg.data.detector_path = str(yunet_path)
    cfg.data.cache_dir = str(tmp_path_factory.mktemp("cache"))  # aligned once, shared by the runs
    cfg.model.tiny_vae_steps = 5
    for key, value in dict(batch_size=BATCH, grad_accum=1, d_start_step=1, checkpoint_every=EVERY, keep_checkpoints=0,
                           val_every=0, log_every=1).items():
        setattr(cfg.train, key, value)
    path = tmp_path_factory.mktemp("cfg") / "ddp.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return path


def _kill_tree(pid: int) -> None:
    """SIGKILL a process we started and all its descendants (torchrun starts the workers in their own sessions,
    so killing the launcher's process group would leave them running)."""
    import psutil

    parent = psutil.Process(pid)
    procs = [*parent.children(recursive=True), parent]
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=60)


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "logs" / "train.jsonl").read_text().splitlines()]


def _final(run: Path) -> Path:
    return run / "checkpoints" / f"step_{STEPS:08d}"


@pytest.fixture(scope="module")
def full_run(cfg_path, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("full")
    r = subprocess.run(_launch(["--config", str(cfg_path), "--output", str(out), "--max-steps", str(STEPS)]),
                       capture_output=True, text=True, env=ENV, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout + r.stderr


def test_two_processes_train_identical_weights_on_disjoint_data(full_run):
    out, output = full_run
    assert "device cpu:0, 2 process(es)" in output
    log = _log(out)
    assert [x["step"] for x in log] == list(range(1, STEPS + 1))
    seen = []
    for x in log:
        rank0, rank1 = x["positions"]
        assert len(rank0) == len(rank1) == BATCH and not set(rank0) & set(rank1)
        seen += rank0 + rank1
    assert sorted(seen) == list(range(STEPS * 2 * BATCH))  # every sample position once, none skipped
    assert all("d" in x and "gan" in x for x in log[1:])  # the discriminator trained under DDP from step 2
    saved = [EVERY, 2 * EVERY, STEPS]
    for step in saved:
        folder = out / "checkpoints" / f"step_{step:08d}"
        assert {p.name for p in folder.iterdir()} == CKPT_FILES
        state = json.loads((folder / "state.json").read_text())
        assert state["num_processes"] == 2
        digests = state["weights_sha256"]  # one per process, each from that process's own weights
        on_disk = ckpt.tensors_digest(ckpt.load_tensors(folder, "generator"), ckpt.load_tensors(folder, "discriminator"))
        assert digests == [on_disk, on_disk], step
        ranks = ckpt.load_object(folder, "rng")["ranks"]
        assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])  # each its own noise
        assert output.count(f"saved checkpoint {folder}") == 1  # written once, by process 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step_{s:08d}" for s in saved]  # no .tmp left
    # the weights really changed between checkpoints (the digests are not of something constant)
    first = json.loads((out / "checkpoints" / f"step_{EVERY:08d}" / "state.json").read_text())["weights_sha256"][0]
    assert first != json.loads((_final(out) / "state.json").read_text())["weights_sha256"][0]


def test_killed_two_process_run_resumes_exactly(full_run, cfg_path, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_launch(["--config", str(cfg_path), "--output", str(out), "--max-steps", str(STEPS)]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    first = out / "checkpoints" / f"step_{EVERY:08d}" / "state.json"
    deadline = time.time() + 400
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    _kill_tree(proc.pid)  # the launcher and both training processes, mid-run
    assert first.is_file(), "the run never reached its first checkpoint"
    assert not _final(out).exists(), "the run finished before it was killed"
    r = subprocess.run(_launch(["--resume", str(out), "--max-steps", str(STEPS)]), capture_output=True, text=True,
                       env=ENV, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    resumed = re.search(r"resumed from \S+ at step (\d+)", r.stdout + r.stderr)
    assert resumed and int(resumed.group(1)) in range(EVERY, STEPS, EVERY), r.stdout[-2000:]
    full, _ = full_run
    a, b = _final(full), _final(out)
    for name in ("generator", "discriminator", "vre"):
        ta, tb = ckpt.load_tensors(a, name), ckpt.load_tensors(b, name)
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    oa, ob = ckpt.load_object(a, "optimizer_g")["state"], ckpt.load_object(b, "optimizer_g")["state"]
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in oa)
    ra, rb = ckpt.load_object(a, "rng")["ranks"], ckpt.load_object(b, "rng")["ranks"]
    assert all(torch.equal(x["torch"], y["torch"]) for x, y in zip(ra, rb))
    # the log reads like the uninterrupted run's: same steps, same data, same losses
    la, lb = _log(full), _log(out)
    assert [(x["step"], x["positions"], x["loss_g"]) for x in la] == [(x["step"], x["positions"], x["loss_g"]) for x in lb]


def test_weights_digest_and_rng_of_a_missing_process(tmp_path):
    a = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2, dtype=torch.bfloat16)}
    b = {k: v.clone() for k, v in a.items()}
    assert ckpt.tensors_digest(a) == ckpt.tensors_digest(b)
    b["w"][1, 2] = torch.nextafter(b["w"][1, 2], torch.tensor(100.0))  # one bit of one element
    assert ckpt.tensors_digest(a) != ckpt.tensors_digest(b)
    assert ckpt.tensors_digest(a) != ckpt.tensors_digest({"w2": a["w"], "b": a["b"]})  # names count
    folder = ckpt.save_checkpoint(tmp_path, 1, {"g": a}, {}, {"num_processes": 1})
    before = torch.get_rng_state()
    torch.rand(3)
    assert ckpt.restore_rng(folder, 0) and torch.equal(torch.get_rng_state(), before)
    assert not ckpt.restore_rng(folder, 1)  # written by one process: process 1 keeps its own seed


def test_bad_input_stops_both_processes_with_a_clear_message(cfg_path, tmp_path):
    """Process 0 reports the bad dataset folder; process 1, waiting for it, points to that message."""
    bad = yaml.safe_load(cfg_path.read_text())
    bad["data"]["datasets"][0]["root"] = str(tmp_path / "missing")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    r = subprocess.run(_launch(["--config", str(tmp_path / "bad.yaml"), "--output", str(tmp_path / "run")]),
                       capture_output=True, text=True, env=ENV, timeout=300)
    output = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"error: dataset root '{tmp_path / 'missing'}': is not a folder" in output
    assert "[rank1]: Traceback" not in output and "[rank0]: Traceback" not in output
