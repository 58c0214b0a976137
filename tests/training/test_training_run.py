"""Stage-2 training on CPU with the tiny config: overfit, exact kill-and-resume, export + load (core loader and
the ComfyUI blind workflow), stage 1, CLI.

The dataset is built in the test from real photos (three of one person, the astronaut and a re-framed copy),
aligned with the real YuNet detector. The tiny base (random UNet, VAE fitted on these crops) is written once
by the first run and reused by the others.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from honestface_core.errors import HonestFaceError  # noqa: E402
from training.config import config_to_dict, load_config  # noqa: E402
from training.engine import Trainer  # noqa: E402

from test_training_data import make_identity_folder  # noqa: E402

OVERFIT_STEPS = 40


@pytest.fixture(scope="module")
def threads():
    """One intra-op thread: far faster than two on a shared 2-core machine, and identical across runs."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory, photos_dir, astronaut, yunet_path):
    root = make_identity_folder(tmp_path_factory.mktemp("ids"), photos_dir, astronaut, bad=False)
    cfg = load_config(REPO / "training" / "configs" / "tiny.yaml")
    cfg.data.datasets[0].root = str(root)
    cfg.data.detector_path = str(yunet_path)
    cfg.data.cache_dir = str(tmp_path_factory.mktemp("cache"))
    # strong degradations so "closer to the target than the input" is a real restoration (tiny.yaml keeps
    # one fixed degradation per crop: the overfit check runs on a fixed training set)
    cfg.degradation = dataclasses.replace(cfg.degradation, blur_sigma=(1.5, 3.0), scale=(3.0, 4.0), noise=(5, 15), jpeg=(40, 70))
    return cfg


def _batch(dataset, n):
    return torch.utils.data.default_collate([dataset[i] for i in range(n)])


@torch.no_grad()
def _restore(trainer, batch):
    model = trainer.model.eval()
    out = trainer.forward(batch["lq"], batch["refs"], batch["ref_mask"], batch["hq"])[0].clamp(-1, 1)
    model.train()
    return out


@pytest.fixture(scope="module")
def overfit_run(tiny_cfg, tmp_path_factory, threads):
    out = tmp_path_factory.mktemp("overfit")
    trainer = Trainer(tiny_cfg, out)
    disc0 = copy.deepcopy(trainer.disc.state_dict())
    batch = _batch(trainer.dataset, len(trainer.dataset))
    before = F.mse_loss(_restore(trainer, batch), batch["hq"]).item()
    history = trainer.train(OVERFIT_STEPS)
    after = F.mse_loss(_restore(trainer, batch), batch["hq"]).item()
    return {"trainer": trainer, "out": out, "history": history, "disc0": disc0, "batch": batch,
            "before": before, "after": after, "lq": F.mse_loss(batch["lq"], batch["hq"]).item()}


def _shared_cfg(tiny_cfg, overfit_run, **train):
    """Config reusing the overfit run's tiny base and backbone (no VAE fitting)."""
    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.base = str(overfit_run["out"] / "base")
    cfg.losses.face_backbone = str(overfit_run["out"] / "base" / "arcface_random.onnx")
    cfg.model.tiny_vae_steps = 0
    cfg.train = dataclasses.replace(cfg.train, **train)
    return cfg


def test_tiny_training_overfits_and_updates_both_players(overfit_run, capsys):
    """Overfit check on the training set (five fixed pairs, strong degradations): the generator's reconstruction
    loss goes down, the restored crops end at least 15 % closer to the targets (MSE) than both the degraded inputs
    and the untrained model's output, the discriminator is updated, and everything is logged.

    Measured on AMD EPYC: after / lq = 0.776 with 1 thread, 0.783 with 2 (0.727 / 0.726 before the CPU warps of
    alignment changed the crops slightly). (Whether the *untrained* model's output is
    a little better or worse than the input is a property of the random base, not of training; it is not asserted.)
    """
    h = overfit_run["history"]
    with capsys.disabled():
        print("\ntiny overfit MSE:", {k: round(overfit_run[k], 4) for k in ("before", "after", "lq")},
              f"after/lq {overfit_run['after'] / overfit_run['lq']:.3f}")
    assert overfit_run["after"] <= 0.85 * overfit_run["lq"]
    assert overfit_run["after"] <= 0.85 * overfit_run["before"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    first, last = h[:5], h[-10:]
    assert mean([x["mse"] for x in last]) < 0.9 * mean([x["mse"] for x in first])
    assert mean([x["loss_g"] for x in last]) < mean([x["loss_g"] for x in first])
    trainer = overfit_run["trainer"]
    ds, n = trainer.dataset, len(trainer.dataset)
    epoch1 = {ds.index_at(q): q for q in range(n, 2 * n)}  # data.fixed_pairs: every epoch sees the same pairs
    assert all(torch.equal(ds[p]["lq"], ds[epoch1[ds.index_at(p)]]["lq"]) for p in range(n))
    lora_b = [p for n, p in trainer.model.named_parameters() if ".lora_B." in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero: it was trained
    disc = trainer.disc.state_dict()
    assert any(not torch.equal(disc[k], v) for k, v in overfit_run["disc0"].items())
    start = trainer.cfg.train.d_start_step
    assert 0 < start < OVERFIT_STEPS
    assert all(("d" in x and "gan" in x) == (x["step"] > start) for x in h)
    assert all(x["grad_norm_g"] > 0 and torch.isfinite(torch.tensor(x["loss_g"])) for x in h)
    out = overfit_run["out"]
    lines = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, OVERFIT_STEPS + 1))
    assert {"mse", "id", "mfa", "gan", "loss_g", "d", "lr", "lr_lora"} <= set(lines[-1])
    assert (out / "samples" / f"step_{OVERFIT_STEPS:08d}.png").is_file()
    assert (out / "checkpoints" / f"step_{OVERFIT_STEPS:08d}" / "state.json").is_file()
    assert "VAE fitted" in (out / "base" / "RANDOM_WEIGHTS_README.txt").read_text()


def _state(trainer):
    model = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return model, copy.deepcopy(trainer.disc.state_dict()), copy.deepcopy(trainer.opt_g.state_dict()["state"])


def test_kill_and_resume_is_exact(tiny_cfg, overfit_run, tmp_path, threads):
    cfg = _shared_cfg(tiny_cfg, overfit_run, checkpoint_every=3, val_every=0, log_every=1, d_start_step=1)
    full = Trainer(cfg, tmp_path / "full")
    full.train(7)

    class Killed(Exception):
        pass

    def kill_after_5(trainer, logs):
        if trainer.step == 5:
            raise Killed

    with pytest.raises(Killed):
        Trainer(cfg, tmp_path / "killed").train(7, on_step=kill_after_5)
    resumed = Trainer(cfg, tmp_path / "killed", resume=tmp_path / "killed")
    assert resumed.step == 3  # newest complete checkpoint before the kill
    resumed.train(7)
    (ma, da, oa), (mb, db, ob) = _state(full), _state(resumed)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert all(torch.equal(da[k], db[k]) for k in da)
    assert all(torch.equal(oa[i]["exp_avg"], ob[i]["exp_avg"]) for i in oa)


def test_export_bundle_loads_with_the_model_loader(overfit_run, tmp_path, threads):
    from honestface_core.model.bundle import load_honestface
    from training.export import export_checkpoint

    out = overfit_run["out"]
    bundle = export_checkpoint(out, tmp_path / "tiny.safetensors")
    with pytest.raises(HonestFaceError, match="already exists"):
        export_checkpoint(out, bundle)
    model = load_honestface(bundle, out / "base", backbone=out / "base" / "arcface_random.onnx")
    batch = overfit_run["batch"]
    refs = (batch["refs"], batch["ref_mask"])
    with torch.no_grad():
        loaded = model(batch["lq"], refs)
    expected = _restore(overfit_run["trainer"], batch)
    assert torch.allclose(loaded, expected, atol=1e-4), (loaded - expected).abs().max()


@pytest.mark.comfy
def test_export_bundle_restores_in_the_comfyui_blind_workflow(overfit_run, comfy_server, astronaut, threads):
    """The exported bundle and the run's tiny base, put in the server's models/ folder (models/honestface and
    models/diffusers/<name>), run through workflows/api/Restore faces (blind).json in the real ComfyUI server: the 64 px
    model restores the 512 px aligned crop (resized to 64 and back) and only the face region changes."""
    import shutil

    from PIL import Image

    from comfy_harness import load_api_workflow
    from test_restore_workflows import _check_only_face_changed, _run
    from training.export import export_checkpoint

    out, models = overfit_run["out"], comfy_server.base_dir / "models"
    (models / "honestface").mkdir(exist_ok=True)
    export_checkpoint(out, models / "honestface" / "tiny_run.safetensors", force=True)
    shutil.copytree(out / "base", models / "diffusers" / "tiny_run_base", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.onnx", "*.txt"))
    Image.fromarray(astronaut).save(comfy_server.input_dir / "astronaut.png")
    prompt = load_api_workflow("Restore faces (blind).json")
    loader = next(v for v in prompt.values() if v["class_type"] == "HonestFaceModelLoader")
    loader["inputs"].update(model="tiny_run.safetensors", base="diffusers/tiny_run_base")
    restored = _run(comfy_server, prompt, "blind_restore")
    _check_only_face_changed(restored, astronaut)


def test_stage1_vre_trains_and_loads_into_stage2(tiny_cfg, overfit_run, tmp_path, threads):
    from safetensors.torch import load_file

    from training.modeling import build_model
    from training.stage1 import train_stage1

    cfg = _shared_cfg(tiny_cfg, overfit_run)
    cfg.stage1 = dataclasses.replace(cfg.stage1, hq_steps=6, lq_steps=4, associate_steps=4, batch_size=2)
    vre_path = train_stage1(cfg, tmp_path / "stage1", log=lambda m: None)
    hist = json.loads((tmp_path / "stage1" / "stage1_history.json").read_text())
    assert hist["hq"][-1] < hist["hq"][0]
    cfg.model.vre_checkpoint = str(vre_path)
    model = build_model(cfg, tmp_path)
    saved = load_file(str(vre_path))
    assert torch.equal(model.vre.codebook.weight, saved["codebook.weight"])
    assert not any(p.requires_grad for p in model.vre.parameters())


def test_train_and_export_scripts(tiny_cfg, overfit_run, tmp_path):
    cfg = _shared_cfg(tiny_cfg, overfit_run, checkpoint_every=2, val_every=0)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    args = [str(REPO / "training" / "train.py"), "--config", str(cfg_path), "--output", str(tmp_path / "run"), "--max-steps", "2"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    r = subprocess.run(launch + args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "generator.safetensors").is_file()
    bundle = tmp_path / "b.safetensors"
    exp = [sys.executable, str(REPO / "training" / "export.py"), str(tmp_path / "run"), str(bundle)]
    r = subprocess.run(exp, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and bundle.is_file(), r.stderr[-2000:]
    r = subprocess.run(exp, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "already exists" in r.stderr
    # a config without datasets fails before training, with a clear message
    bad = config_to_dict(cfg)
    bad["data"]["datasets"] = []
    cfg_path.write_text(yaml.safe_dump(bad))
    r = subprocess.run([sys.executable] + args, capture_output=True, text=True, env=env, timeout=300)  # plain python
    assert r.returncode == 2 and "no dataset configured" in r.stderr
