"""The one safe weight-file reader: Lightning checkpoints (OSDFace's associate_2.ckpt, SD .ckpt) load through inert
stand-ins without pytorch_lightning / omegaconf; pickled code and unknown classes are still refused, with torch's
whole reason; damaged files are told apart from refused ones."""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib.util
import os
import sys
import types
import typing
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from honestface_core.files.checkpoint_globals import PickledObject, allow_list
from honestface_core.errors import HonestFaceError
from honestface_core.model.base_model import load_base_model
from honestface_core.model.config import HonestFaceConfig
from honestface_core.model.osdface import VRE_FILE, load_osdface, read_vre_checkpoint
from honestface_core.testing.honestface_files import CHECKPOINT_NAME
from honestface_core.files.weight_files import read_state_dict, read_weights_file

#: the classes Lightning 1.0.x and OmegaConf 2.3 pickle by module path
FAKE_CLASSES = {
    "ModelCheckpoint": ("pytorch_lightning.callbacks.model_checkpoint", object),
    "EarlyStopping": ("pytorch_lightning.callbacks.early_stopping", object),
    "AttributeDict": ("pytorch_lightning.utilities.parsing", dict),
    "DictConfig": ("omegaconf.dictconfig", object),
    "ListConfig": ("omegaconf.listconfig", object),
    "ContainerMetadata": ("omegaconf.base", object),
    "Metadata": ("omegaconf.base", object),
    "AnyNode": ("omegaconf.nodes", object),
}
FORMATS = {"zip": True, "legacy": False}


@contextlib.contextmanager
def fake_packages(extra: dict[str, tuple[str, type]] | None = None) -> Iterator[types.SimpleNamespace]:
    """Classes under Lightning's and OmegaConf's module paths, importable only inside the block: pickle names a class
    by its module path, and neither package is installed here (nor may it be)."""
    for package in ("pytorch_lightning", "lightning", "omegaconf"):
        assert importlib.util.find_spec(package) is None, f"{package} must not be installed for this test"
    classes = {}
    with pytest.MonkeyPatch.context() as mp:
        for name, (module, base) in {**FAKE_CLASSES, **(extra or {})}.items():
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                if ".".join(parts[:i]) not in sys.modules:
                    mp.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
            classes[name] = type(name, (base,), {"__module__": module, "__qualname__": name})
            setattr(sys.modules[module], name, classes[name])
        yield types.SimpleNamespace(**classes)
    assert not {"pytorch_lightning", "omegaconf"} & set(sys.modules)


def _with_state(cls: type, **state: object) -> object:
    obj = cls.__new__(cls)
    obj.__dict__.update(state)  # plain attributes pickle as NEWOBJ + BUILD(state), as OmegaConf's __getstate__ does
    return obj


def omegaconf_node(oc: types.SimpleNamespace, value: object, key: object = None, parent: object = None) -> object:
    """``OmegaConf.create(value)`` as OmegaConf 2.3 pickles it (checked byte for byte against omegaconf 2.3.0)."""
    meta = dict(ref_type=typing.Any, object_type=None, optional=True, key=key, flags={}, flags_root=False,
                resolver_cache=defaultdict(dict))
    if not isinstance(value, (dict, list)):
        return _with_state(oc.AnyNode, _metadata=_with_state(oc.Metadata, **meta), _parent=parent, _val=value)
    is_dict = isinstance(value, dict)
    meta.update(object_type=dict if is_dict else list, key_type=typing.Any if is_dict else int, element_type=typing.Any)
    node = _with_state(oc.DictConfig if is_dict else oc.ListConfig, _metadata=_with_state(oc.ContainerMetadata, **meta),
                       _parent=parent)
    items = value.items() if is_dict else enumerate(value)
    content = {k: omegaconf_node(oc, v, k, node) for k, v in items}
    node._content = content if is_dict else list(content.values())
    return node


def adam_and_schedule() -> tuple[dict, dict]:
    """An Adam state after one step and its MultiStepLR state (Counter milestones), as DAEFR's optimizers save them."""
    param = torch.nn.Parameter(torch.ones(3))
    adam = torch.optim.Adam([param], lr=4.5e-6, betas=(0.5, 0.9))
    param.sum().backward()
    adam.step()
    schedule = torch.optim.lr_scheduler.MultiStepLR(adam, milestones=[80000, 200000], gamma=0.1)
    return adam.state_dict(), schedule.state_dict()


def lightning_checkpoint(pl: types.SimpleNamespace, state_dict: dict, full: bool = False) -> dict:
    """The dict Lightning 1.0.8's ``dump_checkpoint`` builds for DAEFR's association stage: callback states keyed by
    the ModelCheckpoint class, optimizer and scheduler states. ``full`` adds what other 1.0.x runs store:
    EarlyStopping, ``hparams`` as an AttributeDict holding an argparse Namespace, an OmegaConf config and its type."""
    adam, schedule = adam_and_schedule()
    ckpt = {"epoch": 11, "global_step": 34000, "pytorch-lightning_version": "1.0.8",
            "callbacks": {pl.ModelCheckpoint: {"best_model_score": torch.tensor(0.25),
                                               "best_model_path": "logs/checkpoints/epoch=000011-Associate_loss=0.25.ckpt"}},
            "optimizer_states": [adam] * 4, "lr_schedulers": [schedule] * 4, "state_dict": state_dict}
    if full:
        ckpt["callbacks"][pl.EarlyStopping] = {"wait_count": 2, "stopped_epoch": 0, "best_score": torch.tensor(0.2),
                                               "patience": 3}
        hparams = pl.AttributeDict(lr=4.5e-6, args=argparse.Namespace(base=["configs/Association_stage.yaml"], seed=23))
        config = omegaconf_node(pl, {"lr": 1e-4, "ddconfig": {"ch_mult": [1, 2, 2, 2, 4, 8], "name": "vqgan"}, "flag": True})
        config._metadata.resolver_cache["now"] = {("%Y",): "2021"}  # a filled defaultdict
        ckpt.update({"hparams_name": "kwargs", "hyper_parameters": hparams, "omegaconf_hparams": config,
                     "hparams_type": pl.DictConfig})
    return ckpt


@pytest.fixture
def own_allow_list() -> Iterator[None]:
    """torch's global allow-list emptied for the test and restored after: ComfyUI, when imported in the same
    session, registers its own ModelCheckpoint class under the same name as our stand-in."""
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


@pytest.fixture(scope="module")
def vre_state(test_models_dir) -> dict[str, torch.Tensor]:
    """The (plain) tiny associate_2.ckpt's state dict: vqvae_LQ.encoder.* / quant_conv.* / quantize.* and others."""
    return torch.load(test_models_dir / "honestface" / "osdface" / VRE_FILE, weights_only=True)["state_dict"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_lightning_vre_checkpoint_loads_without_lightning(tmp_path, vre_state, fmt, own_allow_list):
    path = tmp_path / VRE_FILE
    with fake_packages() as pl:
        torch.save(lightning_checkpoint(pl, vre_state, full=True), path, _use_new_zipfile_serialization=FORMATS[fmt])
    with pytest.raises(Exception, match="Unsupported global: GLOBAL pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"):
        torch.load(path, weights_only=True)  # what plain weights_only does with this file
    before = set(torch.serialization.get_safe_globals())
    ckpt = read_weights_file(path, "OSDFace's associate_2.ckpt")
    assert set(torch.serialization.get_safe_globals()) == before  # the allow-list was scoped to the load
    assert not {"pytorch_lightning", "omegaconf"} & set(sys.modules)
    # the stand-ins keep what the file holds
    (mc, mc_state), (es, es_state) = ckpt["callbacks"].items()
    assert issubclass(mc, PickledObject) and mc.pickled_as == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert es.pickled_as.endswith("EarlyStopping") and es_state["patience"] == 3
    assert torch.equal(mc_state["best_model_score"], torch.tensor(0.25))
    assert type(ckpt["hyper_parameters"]) is dict and ckpt["hyper_parameters"]["args"].seed == 23
    config = ckpt["omegaconf_hparams"]
    assert config.pickled_as == "omegaconf.dictconfig.DictConfig" and ckpt["hparams_type"].pickled_as == config.pickled_as
    assert config.state["_content"]["ddconfig"].state["_content"]["ch_mult"].state["_content"][5].state["_val"] == 8
    assert config.state["_metadata"].state["resolver_cache"] == {"now": {("%Y",): "2021"}}
    assert ckpt["lr_schedulers"][0]["milestones"] == {80000: 1, 200000: 1}
    # the OSDFace reader takes the LQ branch under our key names
    vre = read_vre_checkpoint(path)
    expected = {k[len("vqvae_LQ."):]: v for k, v in vre_state.items()
                if k.startswith(("vqvae_LQ.encoder.", "vqvae_LQ.quant_conv."))}
    assert vre.keys() == expected.keys() | {"codebook.weight"}
    assert all(torch.equal(vre[k], v) for k, v in expected.items())
    assert torch.equal(vre["codebook.weight"], vre_state["vqvae_LQ.quantize.embedding.weight"])


def test_osdface_model_loads_lightning_checkpoint(tmp_path, test_models_dir, vre_state):
    models = test_models_dir
    folder = tmp_path / "osdface"
    folder.mkdir()
    for name in os.listdir(models / "honestface" / "osdface"):
        (folder / name).write_bytes((models / "honestface" / "osdface" / name).read_bytes())
    with fake_packages() as pl:
        torch.save(lightning_checkpoint(pl, vre_state), folder / VRE_FILE)
    model = load_osdface(folder, models / "diffusers" / "stable-diffusion-2-1-base")
    assert torch.equal(model.vre.codebook.weight, vre_state["vqvae_LQ.quantize.embedding.weight"])
    assert torch.equal(model.vre.encoder.conv_in.weight, vre_state["vqvae_LQ.encoder.conv_in.weight"])


def test_sd_lightning_ckpt_reads_like_the_safetensors_file(tmp_path, test_models_dir):
    models = test_models_dir
    """An SD single-file .ckpt as Lightning saved it (numpy float64 in the scheduler state, as old SD files hold
    numpy scalars) gives the same UNet and VAE as the tiny single-file safetensors."""
    single = models / "checkpoints" / CHECKPOINT_NAME
    state = load_file(str(single))
    adam, schedule = adam_and_schedule()
    schedule["_last_lr"] = [np.float64(1e-4)]
    ckpt = tmp_path / "v2-1_512-ema-pruned.ckpt"
    with fake_packages() as pl:
        torch.save({"epoch": 5, "global_step": 220000, "pytorch-lightning_version": "1.4.2",
                    "callbacks": {pl.ModelCheckpoint: {"monitor": None, "best_model_score": None, "best_model_path": "",
                                                       "current_score": None, "dirpath": "logs/checkpoints"}},
                    "optimizer_states": [adam], "lr_schedulers": [schedule], "state_dict": state}, ckpt)
    full = read_weights_file(ckpt, "an SD checkpoint")
    assert full["global_step"] == 220000 and full["lr_schedulers"][0]["_last_lr"] == [np.float64(1e-4)]
    gen = HonestFaceConfig.tiny().generator
    for ours, theirs in zip(load_base_model(ckpt, gen.unet, gen.vae), load_base_model(single, gen.unet, gen.vae)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a file written with numpy 1.x names its scalar rebuild function numpy.core.multiarray.scalar
    legacy = tmp_path / "numpy1.ckpt"
    torch.save({"lr": [np.float64(0.5)], "state_dict": {"w": torch.ones(2)}}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\nscalar" in legacy.read_bytes()
    assert read_weights_file(legacy, "an SD checkpoint")["lr"] == [0.5]


class _Payload:
    """Unpickling this calls ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func: object, *args: object) -> None:
        self.call = (func, args)

    def __reduce__(self) -> tuple:
        return self.call


def _assert_refused(path: Path, *names: str) -> None:
    with pytest.raises(HonestFaceError) as info:
        read_state_dict(path, "OSDFace's associate_2.ckpt")
    text = str(info.value)
    assert str(path) in text and "cannot be read as OSDFace's associate_2.ckpt" in text and "refused for safety" in text
    assert "\x1b" not in text and "Weights only load failed" in text  # torch's whole message: names on later lines
    assert "truncated" not in text and "damaged" not in text
    for name in names:
        assert name in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_code_payloads_and_unknown_classes_are_refused(tmp_path, vre_state, fmt):
    marker = tmp_path / "pwned"
    before = set(torch.serialization.get_safe_globals())
    payloads = {"os.system": (_Payload(os.system, f"touch {marker}"), "posix.system"),
                "eval": (_Payload(builtins.eval, f"open({str(marker)!r}, 'w')"), "GLOBAL eval"),
                "exec": (_Payload(builtins.exec, f"open({str(marker)!r}, 'w')"), "GLOBAL exec"),
                "Path.touch": (_Payload(Path.touch, marker), "GLOBAL getattr"),  # protocol 2 names it getattr(Path, "touch")
                "unknown class": (None, "GLOBAL otherpkg.models.Net was not an allowed global")}
    for label, (payload, name) in payloads.items():
        path = tmp_path / f"{label}.ckpt"
        with fake_packages({"Net": ("otherpkg.models", object)}) as pl:
            ckpt = lightning_checkpoint(pl, vre_state, full=True)  # the stand-ins open no door for what follows
            ckpt["hyper_parameters"]["model"] = payload if payload is not None else pl.Net()
            torch.save(ckpt, path, _use_new_zipfile_serialization=FORMATS[fmt])
        _assert_refused(path, name)
    # torch puts this phrase in bold (ANSI codes); the message keeps the words, not the codes
    _assert_refused(path, "do those steps only if you trust the source of the checkpoint")
    assert not marker.exists() and set(torch.serialization.get_safe_globals()) == before


def test_stand_ins_run_nothing_and_keep_arguments(tmp_path, own_allow_list):
    class Rebuilt:
        def __reduce__(self):
            return (pl.ModelCheckpoint, ("logs", "val/loss"), {"verbose": True})

    path = tmp_path / "callback.ckpt"
    with fake_packages() as pl:
        torch.save({"callback": Rebuilt()}, path)
    loaded = read_weights_file(path, "a checkpoint")["callback"]
    assert isinstance(loaded, PickledObject) and loaded.args == ("logs", "val/loss") and loaded.state == {"verbose": True}
    assert "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint" in repr(loaded)


def test_a_users_own_allow_list_entries_survive(tmp_path, vre_state, own_allow_list):
    path = tmp_path / VRE_FILE
    with fake_packages() as pl:
        torch.save(lightning_checkpoint(pl, vre_state), path)
    comfy_style = type("ModelCheckpoint", (), {"__module__": "pytorch_lightning.callbacks.model_checkpoint"})
    torch.serialization.add_safe_globals([comfy_style, allow_list()[0]])  # as ComfyUI does; and one of ours
    assert read_vre_checkpoint(path).keys() >= {"codebook.weight", "encoder.conv_in.weight"}
    assert set(torch.serialization.get_safe_globals()) == {comfy_style, allow_list()[0]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_files_are_not_called_refused(tmp_path, fmt):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, good, _use_new_zipfile_serialization=FORMATS[fmt])
    data = good.read_bytes()
    cases = {"truncated.ckpt": data[: len(data) // 2], "garbage.ckpt": b"<html>404 Not Found</html>",
             "empty.ckpt": b"", "cut.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{\"w\": "}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(HonestFaceError) as info:
            read_state_dict(tmp_path / name, "a test checkpoint")
        text = str(info.value)
        assert name in text and "damaged, truncated or not a weight file" in text and "Replace it" in text, text
        assert "refused" not in text and "\x1b" not in text
    with pytest.raises(HonestFaceError, match="cannot be read as a test checkpoint .*Is a directory.*readable file"):
        read_state_dict(tmp_path, "a test checkpoint")
