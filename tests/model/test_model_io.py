"""Model files: tiny test-model writer, SD-2.1 base loading, bundle save/load, merged LoRA, OSDFace import, errors."""

from __future__ import annotations

import fractions
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from honestface_core.errors import HonestFaceError, MissingModelError
from honestface_core.model import lora as lora_utils
from honestface_core.model.base_model import find_base_model, load_base_model
from honestface_core.model.bundle import load_honestface, read_bundle, save_bundle
from honestface_core.model.config import HonestFaceConfig
from honestface_core.testing.arcface_onnx import write_arcface_onnx
from honestface_core.model.osdface import load_osdface
from honestface_core.testing.honestface_files import write_honestface_test_models


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_honestface_test_models(root)
    write_arcface_onnx(root / "insightface" / "models" / "buffalo_l" / "w600k_r50.onnx")
    return root


@pytest.fixture(scope="module")
def base(models) -> Path:
    return models / "diffusers" / "stable-diffusion-2-1-base"


@pytest.fixture(scope="module")
def bundle(models) -> Path:
    return models / "honestface" / "honestface.safetensors"


def lq_batch(n: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(7)) * 2 - 1


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_writer_layout_and_never_overwrites(models):
    expected = ["diffusers/stable-diffusion-2-1-base/unet/config.json", "diffusers/stable-diffusion-2-1-base/vae/diffusion_pytorch_model.safetensors",
                "checkpoints/v2-1_512-ema-pruned.safetensors", "honestface/honestface.safetensors",
                "honestface/osdface/associate_2.ckpt", "honestface/osdface/pytorch_lora_weights.safetensors",
                "honestface/osdface/embedding_change_weights.pth"]
    for rel in expected:
        assert (models / rel).is_file(), rel
    before = {p: digest(p) for p in models.rglob("*") if p.is_file()}
    assert write_honestface_test_models(models) == []
    assert {p: digest(p) for p in models.rglob("*") if p.is_file()} == before
    assert find_base_model(models) == models / "diffusers" / "stable-diffusion-2-1-base"


def test_single_file_checkpoint_equals_diffusers_folder(models, base):
    gen = HonestFaceConfig.tiny().generator
    folder_unet, folder_vae = load_base_model(base)
    file_unet, file_vae = load_base_model(models / "checkpoints" / "v2-1_512-ema-pruned.safetensors", gen.unet, gen.vae)
    for a, b in ((folder_unet, file_unet), (folder_vae, file_vae)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ldm = load_file(str(models / "checkpoints" / "v2-1_512-ema-pruned.safetensors"))
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in ldm)
    assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in ldm
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    # the shipped (full-size) config does not fit the tiny file: clear error, no traceback from torch
    with pytest.raises(HonestFaceError, match="does not match the SD-2.1-base UNet"):
        load_base_model(models / "checkpoints" / "v2-1_512-ema-pruned.safetensors")


def test_bundle_round_trip_bit_identical(tmp_path, bundle, base, models):
    backbone = models / "insightface" / "models" / "buffalo_l" / "w600k_r50.onnx"
    model = load_honestface(bundle, base, backbone=backbone)
    lq, refs = lq_batch(), [lq_batch(3, 64), None]
    with torch.no_grad():
        out = model(lq, refs)
    copy = save_bundle(model, tmp_path / "copy.safetensors")
    assert read_bundle(copy)[0] == model.config
    again = load_honestface(copy, models / "checkpoints" / "v2-1_512-ema-pruned.safetensors", backbone=backbone)
    with torch.no_grad():
        assert torch.equal(again(lq, refs), out)
    a, b = load_file(str(bundle)), load_file(str(copy))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("unet_lora.") and k.endswith(".lora_A.weight") for k in a)
    assert {k.split(".")[0] for k in a} == {"vre", "projector", "identity_encoder", "feature_extractor", "fusion", "unet_lora"}


def test_merged_lora_equals_unmerged_and_matters(bundle, base):
    plain = load_honestface(bundle, base)
    merged = load_honestface(bundle, base, merge_lora=True)
    assert lora_utils.has_lora(plain.generator.unet) and not lora_utils.has_lora(merged.generator.unet)
    lq = lq_batch()
    with torch.no_grad():
        prompt = plain.encode_prompt(lq)
        z = plain.generator.encode(lq)
        a, b = plain.restore_latent(z, prompt), merged.restore_latent(z, prompt)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        plain.generator.unet.disable_adapters()
        without = plain.restore_latent(z, prompt)
        plain.generator.unet.enable_adapters()
    assert (a - without).abs().max() > 100 * (a - b).abs().max()
    with pytest.raises(HonestFaceError, match="merged"):
        save_bundle(merged, bundle.parent / "merged.safetensors")
    assert not (bundle.parent / "merged.safetensors").exists()


def test_load_in_half_precision(bundle, base):
    for dtype in (torch.bfloat16, torch.float16):
        model = load_honestface(bundle, base, dtype=dtype)
        assert model.dtype == dtype and model.generator.unet.dtype == dtype
        with torch.no_grad():
            out = model(lq_batch(1).to(dtype))
        assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_bundle_errors(tmp_path, bundle, base, models):
    with pytest.raises(MissingModelError) as err:
        load_honestface(tmp_path / "nope.safetensors", base)
    assert "nope.safetensors" in str(err.value) and str(tmp_path) in str(err.value)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(bundle.read_bytes()[:1000])
    with pytest.raises(HonestFaceError, match="not a readable"):
        load_honestface(corrupt, base)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(HonestFaceError, match="no HonestFace metadata"):
        load_honestface(foreign, base)
    # a bundle whose config does not match its tensors
    config, tensors = read_bundle(bundle)
    config.features.num_tokens = 8
    bad = tmp_path / "bad_config.safetensors"
    save_file(tensors, str(bad), metadata={"format": "honestface", "format_version": "1", "config": config.to_json()})
    with pytest.raises(HonestFaceError, match="does not match its config"):
        load_honestface(bad, base)
    # a base model whose UNet differs from the bundle's config
    other = tmp_path / "other_base"
    shutil.copytree(base, other)
    cfg_path = other / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["cross_attention_dim"] = 768
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(HonestFaceError, match="cross_attention_dim"):
        load_honestface(bundle, other)
    # a missing base: names the file and the folder
    with pytest.raises(MissingModelError, match="unet/config.json"):
        load_honestface(bundle, tmp_path)
    with pytest.raises(MissingModelError, match="no_such_base"):
        load_honestface(bundle, tmp_path / "no_such_base")
    # saving never overwrites
    model = load_honestface(bundle, base)
    before = digest(bundle)
    with pytest.raises(HonestFaceError, match="already exists"):
        save_bundle(model, bundle)
    assert digest(bundle) == before


def test_osdface_files_load_and_run(tmp_path, models, base):
    folder = models / "honestface" / "osdface"
    model = load_osdface(folder, base)
    assert model.config.variant == "osdface" and model.config.num_prompt_tokens == 77
    lq = lq_batch()
    with torch.no_grad():
        prompt = model.encode_prompt(lq)
        assert prompt.shape == (2, 77, 1024)
        codes, _ = model.vre((lq - 0.5) / 0.5)  # OSDFace's double normalisation
        torch.testing.assert_close(prompt, model.projector(codes))
        assert not torch.allclose(model.projector(model.vre(lq)[0]), prompt)
        out = model(lq)
    assert out.shape == lq.shape and torch.isfinite(out).all()
    ckpt = torch.load(folder / "associate_2.ckpt", weights_only=True)["state_dict"]
    torch.testing.assert_close(model.vre.codebook.weight, ckpt["vqvae_LQ.quantize.embedding.weight"])
    merged = load_osdface(folder, base, merge_lora=True)
    # the older lora.down / lora.up key names give the same model
    old = tmp_path / "osdface_old"
    shutil.copytree(folder, old)
    lora = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    renamed = {k.replace(".lora_A.weight", ".lora.down.weight").replace(".lora_B.weight", ".lora.up.weight"): v for k, v in lora.items()}
    save_file(renamed, str(old / "pytorch_lora_weights.safetensors"))
    old_model = load_osdface(old, base)
    with torch.no_grad():
        z = model.generator.encode(lq)
        ref = model.restore_latent(z, prompt)
        torch.testing.assert_close(merged.restore_latent(z, prompt), ref, rtol=1e-4, atol=1e-4)
        assert torch.equal(old_model.restore_latent(z, prompt), ref)
    (old / "embedding_change_weights.pth").unlink()
    with pytest.raises(MissingModelError, match="embedding_change_weights.pth"):
        load_osdface(old, base)
    bad = tmp_path / "osdface_bad"
    shutil.copytree(folder, bad)
    torch.save({"state_dict": {"vqvae_HQ.encoder.conv_in.weight": torch.zeros(1)}}, bad / "associate_2.ckpt")
    with pytest.raises(HonestFaceError, match="vqvae_LQ"):
        load_osdface(bad, base)
    torch.save({"state_dict": ckpt, "hyper_parameters": fractions.Fraction(1, 3)}, bad / "associate_2.ckpt")
    with pytest.raises(HonestFaceError, match="cannot be read as OSDFace.s associate_2.ckpt.*refused for safety"):  # not on the allow-list
        load_osdface(bad, base)


# ------------------------------------------------------------------------------------------- crafted bundle files


def craft_bundle(src: Path, dst: Path, edit=None, tensors_edit=None) -> Path:
    """A copy of the bundle ``src`` whose config dict (``edit(config)``) and/or tensors (``tensors_edit(tensors)``)
    were changed, written in the bundle format (safetensors + metadata)."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(metadata["config"])
    if edit is not None:
        edit(config)
    if tensors_edit is not None:
        tensors_edit(tensors)
    metadata["config"] = json.dumps(config)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def _set(path: str, value):
    def edit(config: dict) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


@pytest.mark.parametrize("field, value, problem", [
    ("vre.codebook_size", 10**12, "outside 1..65536"),
    ("vre.codebook_size", -1024, "outside 1..65536"),
    ("prompt_dim", 0, "outside 1..8192"),
    ("features.dim", "512", "of type str, not an integer"),
    ("lora.rank", 16.0, "of type float, not an integer"),
    ("vre.num_res_blocks", True, "of type bool, not an integer"),
    ("identity.num_tokens", 5000, "outside 1..4096"),
    ("vre.channel_mult", [1, 2, -2, 4, 8], "outside 1..64"),
    ("generator.unet.block_out_channels", [8, 16, 10**9, 16], "outside 1..8192"),
    ("generator.vae.latent_channels", 4.5, "not an integer"),
    ("generator.timestep", 1000, "below the scheduler's 1000 steps"),
    ("lora.alpha", float("nan"), "not a number in (0, 10000]"),
    ("features.backbone", "../../../etc/model", "not a model file name"),
    ("vre", [], "not a JSON object"),
])
def test_crafted_bundle_config_is_refused_before_anything_is_built(tmp_path, bundle, field, value, problem):
    """Every size in a bundle's config is type- and bounds-checked while reading it; the error names the bundle
    file and the field. The base path does not exist: a MissingModelError would show the check came too late."""
    crafted = craft_bundle(bundle, tmp_path / "crafted.safetensors", _set(field, value))
    with pytest.raises(HonestFaceError) as err:
        load_honestface(crafted, tmp_path / "no_base_here")
    assert not isinstance(err.value, MissingModelError)
    message = str(err.value)
    assert str(crafted) in message and f"field '{field}" in message and problem in message, message
    assert "Traceback" not in message


def test_bundle_config_bounds_cover_every_size_field():
    """Every int field of every config section has a bound (a new field without one fails here)."""
    import dataclasses
    import typing

    from honestface_core.model import config as cfg

    unbounded = []
    for prefix, section in [("", cfg.HonestFaceConfig)] + [
            (f"{name}.", typing.get_type_hints(cfg.HonestFaceConfig)[name]) for name in cfg.SECTIONS]:
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            hint = hints[f.name]
            if (hint is int or typing.get_args(hint)[:1] == (int,)) and prefix + f.name not in cfg._INT_BOUNDS:
                unbounded.append(prefix + f.name)
    assert unbounded == []
    cfg.validate_config(cfg.HonestFaceConfig())  # the real sizes are within the bounds
    cfg.validate_config(cfg.HonestFaceConfig.tiny("osdface"))


def test_crafted_bundle_consistency_and_size_before_base(tmp_path, bundle):
    """Fields each within bounds but inconsistent (heads that do not divide the width), a model beyond the
    parameter bound, tensors that do not fit the config: refused before the base model is read."""
    cases = [
        (_set("features.heads", 3), {}, "does not describe a buildable model"),
        (_set("generator.unet.block_out_channels", [4096, 4096, 4096, 4096]), {}, "billion parameters"),
        (None, {"fusion.branch_embed": torch.zeros(3, 7)}, "wrong shape ['fusion.branch_embed (3, 7) != (3, 1024)']"),
    ]
    for i, (edit, replace, problem) in enumerate(cases):
        crafted = craft_bundle(bundle, tmp_path / f"crafted{i}.safetensors", edit, lambda t, r=replace: t.update(r))
        with pytest.raises(HonestFaceError) as err:
            load_honestface(crafted, tmp_path / "no_base_here")
        assert not isinstance(err.value, MissingModelError) and str(crafted) in str(err.value)
        assert problem in str(err.value), str(err.value)

    def bad_lora(tensors):
        key = next(k for k in tensors if k.startswith("unet_lora.") and k.endswith("lora_B.weight"))
        tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])
    crafted = craft_bundle(bundle, tmp_path / "bad_lora.safetensors", tensors_edit=bad_lora)
    with pytest.raises(HonestFaceError, match="LoRA") as err:
        load_honestface(crafted, tmp_path / "no_base_here")
    assert not isinstance(err.value, MissingModelError)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_bundle_weights_are_named(tmp_path, bundle, base, bad):
    """A NaN / Inf anywhere in the bundle would give black restores: refused on reading, naming the tensor."""
    key = "projector.conv2.weight"

    def poison(tensors):
        tensors[key] = tensors[key].clone()
        tensors[key].view(-1)[5] = bad
    crafted = craft_bundle(bundle, tmp_path / "nan.safetensors", tensors_edit=poison)
    with pytest.raises(HonestFaceError) as err:
        load_honestface(crafted, base)
    message = str(err.value)
    assert str(crafted) in message and f"tensor '{key}'" in message
    assert ("NaN" if bad != bad else "infinite") in message


def test_osdface_files_with_non_finite_or_crafted_weights(tmp_path, models):
    """NaN / Inf in any of OSDFace's three files, or sizes no OSDFace model has, are refused naming the file,
    before the base model is read (the base path does not exist)."""
    folder = models / "honestface" / "osdface"
    no_base = tmp_path / "no_base_here"
    bad = tmp_path / "osdface_nan"
    shutil.copytree(folder, bad)
    projector = torch.load(folder / "embedding_change_weights.pth", weights_only=True)
    poisoned = {k: v.clone() for k, v in projector.items()}
    poisoned["conv1.bias"][0] = float("nan")
    torch.save(poisoned, bad / "embedding_change_weights.pth")
    with pytest.raises(HonestFaceError) as err:
        load_osdface(bad, no_base)
    assert not isinstance(err.value, MissingModelError)
    assert "embedding_change_weights.pth" in str(err.value) and "tensor 'conv1.bias' holds NaN" in str(err.value)
    torch.save(projector, bad / "embedding_change_weights.pth")
    lora = load_file(str(folder / "pytorch_lora_weights.safetensors"))
    key = sorted(lora)[0]
    lora[key] = lora[key].clone()
    lora[key].view(-1)[0] = float("inf")
    save_file(lora, str(bad / "pytorch_lora_weights.safetensors"))
    with pytest.raises(HonestFaceError, match=re.escape(f"pytorch_lora_weights.safetensors': tensor '{key}' holds infinite")):
        load_osdface(bad, no_base)
    # a codebook of more entries than the bounds allow (the tensor itself is small: 1 column)
    shutil.copy(folder / "pytorch_lora_weights.safetensors", bad / "pytorch_lora_weights.safetensors")
    ckpt = torch.load(folder / "associate_2.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    codebook = state["vqvae_LQ.quantize.embedding.weight"]
    state["vqvae_LQ.quantize.embedding.weight"] = torch.full_like(codebook, float("nan"))
    torch.save(ckpt, bad / "associate_2.ckpt")
    with pytest.raises(HonestFaceError, match="associate_2.ckpt': tensor 'vqvae_LQ.quantize.embedding.weight' holds NaN"):
        load_osdface(bad, no_base)
    state["vqvae_LQ.quantize.embedding.weight"] = torch.zeros(70000, 1)
    torch.save(ckpt, bad / "associate_2.ckpt")
    with pytest.raises(HonestFaceError, match=r"do not describe an OSDFace model \(field 'vre.codebook_size'") as err:
        load_osdface(bad, no_base)
    assert not isinstance(err.value, MissingModelError)
