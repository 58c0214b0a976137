"""Warm start from OSDFace (training/configs/osdface_warmstart.yaml): before any training step the warm-started
HonestFace restores a face without references exactly as OSDFace's model on the same files does.

OSDFace's three files are written in their real formats (``associate_2.ckpt`` as a PyTorch Lightning 1.0.8
checkpoint, a LoRA safetensors with ``unet.`` PEFT names, the projector ``.pth``) for the tiny SD-2.1-shaped base.

Tolerances: the blind comparison is ``torch.equal``. Both models run the same operations on the same values with
the same tensor layouts in one process (the extra LoRA layers add exact zeros, the zero-initialised mixer output is
exactly zero, raw p_L is the projector's own tensor), so no CPU can round them differently. A masked token in a
mixed batch gets softmax weight exactly 0 (diffusers adds -10000 before the softmax; exp underflows to 0 in
float32), so masking equals dropping the token up to the summation order over 97 instead of 77 keys: ~1e-7 relative
per attention, measured <= 1.3e-5 on the restored image in [-1, 1]. atol 1e-4 covers that with room for any CPU and
is still 78x below one 8-bit level (2/255); each switch set back to its default moves the output by >= 0.015.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.model.config import ConfigError, HonestFaceConfig
from honestface_core.testing.arcface_onnx import write_arcface_onnx
from honestface_core.model.osdface import LORA_FILE, PROJECTOR_FILE, VRE_FILE, load_osdface
from honestface_core.testing.honestface_files import write_honestface_test_models
from test_weight_files import fake_packages, lightning_checkpoint
from training.config import load_config
from training.modeling import TrainingForward, build_model

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "training" / "configs" / "osdface_warmstart.yaml"
MASK_ATOL = 1e-4  # see the module docstring


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Tiny base, OSDFace's files (VRE as a Lightning checkpoint) and a random ArcFace ONNX with 512-wide features."""
    root = tmp_path_factory.mktemp("models")
    write_honestface_test_models(root)
    vre = root / "honestface" / "osdface" / VRE_FILE
    state = torch.load(vre, weights_only=True)["state_dict"]
    vre.unlink()
    with fake_packages() as pl:
        torch.save(lightning_checkpoint(pl, state), vre)
    write_arcface_onnx(root / "w600k_r50.onnx", width=64)
    return root


@pytest.fixture(scope="module")
def osdface(models):
    return load_osdface(models / "honestface" / "osdface", models / "diffusers" / "stable-diffusion-2-1-base")


def warm_config(models: Path, **fusion):
    """The shipped warm-start config with this test's files (fusion/vre fields overridable)."""
    cfg = load_config(CONFIG)
    cfg.model.base = str(models / "diffusers" / "stable-diffusion-2-1-base")
    cfg.model.osdface_init = str(models / "honestface" / "osdface")
    cfg.losses.face_backbone = str(models / "w600k_r50.onnx")
    cfg.model.overrides["fusion"].update(fusion)
    return cfg


def images(n: int, seed: int, k: int | None = None) -> torch.Tensor:
    shape = (n, 3, 64, 64) if k is None else (n, k, 3, 64, 64)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_vre_file_is_a_lightning_checkpoint(models):
    with fake_packages() as pl:
        ckpt = torch.load(models / "honestface" / "osdface" / VRE_FILE, weights_only=False)
        assert ckpt["pytorch-lightning_version"] == "1.0.8" and pl.ModelCheckpoint in ckpt["callbacks"]


@pytest.mark.parametrize("mixer_layers", [0, 1])
def test_blind_warm_start_equals_osdface(tmp_path, models, osdface, mixer_layers):
    warm = build_model(warm_config(models, mixer_layers=mixer_layers), tmp_path).eval()
    folder = models / "honestface" / "osdface"
    # OSDFace's weights are in place; only the identity branches and the fusion are new
    osd_params = {n.replace(".base_layer", ""): p for n, p in osdface.named_parameters() if "lora_" not in n}
    base = [(n.replace(".base_layer", ""), p) for n, p in warm.named_parameters()
            if n.startswith(("vre.", "projector.", "generator.")) and "lora_" not in n]
    assert len(base) == len(osd_params) and all(torch.equal(p, osd_params[n]) for n, p in base)
    lora_file = {k.removeprefix("unet."): v for k, v in load_file(str(folder / LORA_FILE)).items()}
    unet = dict(warm.generator.unet.named_parameters())
    for key, value in lora_file.items():
        assert torch.equal(unet[key[: -len(".weight")] + ".default.weight"], value), key
    fresh_lora = [n for n in unet if ".lora_B." in n and n.replace(".default.weight", ".weight") not in lora_file]
    assert fresh_lora and all(not unet[n].any() for n in fresh_lora)  # layers OSDFace has no LoRA for: B = 0
    assert torch.equal(warm.projector.conv2.weight, torch.load(folder / PROJECTOR_FILE, weights_only=True)["conv2.weight"])
    trainable = {n.split(".")[0] for n, p in warm.named_parameters() if p.requires_grad}
    assert trainable == {"projector", "identity_encoder", "feature_extractor", "fusion", "generator"}
    assert warm.config.vre.input_norm == "double" and warm.config.fusion.absent_tokens == "masked"

    lq = images(2, seed=3)
    with torch.no_grad():
        expected = osdface(lq)
        assert torch.equal(warm.encode_prompt(lq), osdface.encode_prompt(lq))
        assert torch.equal(warm(lq), expected)
        assert torch.equal(warm(lq, [None, None]), expected)
    # the training forward (unclamped) before any step: the same restore
    restored, _, prompt, _ = TrainingForward(warm)(lq, images(2, 5, k=0), torch.zeros(2, 0, dtype=torch.bool), lq)
    assert prompt.shape == (2, 77, 1024) and torch.equal(restored.detach().clamp(-1, 1), expected)


@pytest.mark.parametrize("switch, value", [("input_norm", "single"), ("lq_tokens", "normed"), ("absent_tokens", "null")])
def test_each_switch_is_needed(tmp_path, models, osdface, switch, value):
    """With any one of the three switches at its default, the blind restore is no longer OSDFace's: the equality
    above is a real check."""
    cfg = warm_config(models)
    if switch == "input_norm":
        cfg.model.overrides["vre"]["input_norm"] = value
    else:
        cfg.model.overrides["fusion"][switch] = value
    warm = build_model(cfg, tmp_path).eval()
    lq = images(2, seed=3)
    with torch.no_grad():  # measured: 0.015 (input_norm), 2.0 (lq_tokens), 0.37 (absent_tokens)
        assert (warm(lq) - osdface(lq)).abs().max() > 10 * MASK_ATOL


def test_references_at_init(tmp_path, models, osdface):
    """Our design: a face with references gets p_F and p_I, which act from the start (softmax attention has no
    neutral token); a face without references in the same batch has them masked out and stays OSDFace's restore."""
    warm = build_model(warm_config(models, mixer_layers=1), tmp_path).eval()
    lq = images(2, seed=3)
    refs, mask = images(2, 4, k=2), torch.tensor([[True, True], [False, False]])
    with torch.no_grad():
        expected = osdface(lq)
        prompt, keep = warm.encode_prompt_masked(lq, (refs, mask))
        assert prompt.shape == (2, 97, 1024)
        assert keep[0].all() and keep[1, :77].all() and not keep[1, 77:].any()
        with pytest.raises(HonestFaceError, match="encode_prompt_masked"):
            warm.encode_prompt(lq, (refs, mask))
        out = warm(lq, (refs, mask))
        torch.testing.assert_close(out[1], expected[1], rtol=0, atol=MASK_ATOL)
        assert (out[0] - expected[0]).abs().max() > 1e-2
        full = (refs, mask.new_ones(2, 2))  # every face has references: no mask, encode_prompt works
        assert warm.encode_prompt_masked(lq, full)[1] is None
        assert torch.equal(warm.encode_prompt(lq, full), warm.encode_prompt_masked(lq, full)[0])
        # the training forward passes the same token mask to the UNet
        restored, _, prompt_t, _ = TrainingForward(warm)(lq, refs, mask, lq)
    torch.testing.assert_close(restored.detach().clamp(-1, 1), out, rtol=0, atol=MASK_ATOL)
    assert torch.equal(prompt_t, prompt)


def test_warm_start_errors(tmp_path, models):
    cfg = warm_config(models)
    cfg.model.base = str(tmp_path / "no_base_here")  # any error below must come before the base is read
    cfg.model.vre_checkpoint = str(models / "honestface" / "osdface" / VRE_FILE)
    with pytest.raises(HonestFaceError, match="model.osdface_init") as err:
        build_model(cfg, tmp_path)
    assert not isinstance(err.value, MissingModelError)
    cfg.model.vre_checkpoint = ""
    partial = tmp_path / "osdface"
    shutil.copytree(models / "honestface" / "osdface", partial)
    (partial / PROJECTOR_FILE).unlink()
    cfg.model.osdface_init = str(partial)
    with pytest.raises(MissingModelError, match=PROJECTOR_FILE):
        build_model(cfg, tmp_path)
    narrow = warm_config(models)
    narrow.model.overrides["lora"] = {"target_modules": ["to_q"]}  # OSDFace's file also has to_k, conv1, ...
    with pytest.raises(HonestFaceError, match="lora.target_modules"):
        build_model(narrow, tmp_path)
    for field, bad in (("fusion", {"lq_tokens": "none"}), ("fusion", {"absent_tokens": 0}), ("vre", {"input_norm": "triple"})):
        with pytest.raises(ConfigError, match=f"{field}.{next(iter(bad))}"):
            HonestFaceConfig.from_dict({field: bad})
