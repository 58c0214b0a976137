"""CLIP-IQA metric: OpenAI-format weight files (TorchScript archive read without TorchScript, safetensors, state
dict), tiny random CLIP with the real key names, the score contract and the errors."""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from honestface_core.errors import HonestFaceError
from honestface_core.metrics.image_quality import MetricUnavailable
from honestface_core.metrics.iqa_clipiqa import (
    CLIP_FILES,
    PLUS_FILE,
    CLIPIQAMetric,
    CLIPModel,
    clip_sizes,
    read_clip_state_dict,
)
from honestface_core.metrics.torchscript_weights import read_torchscript_state_dict

#: a tiny CLIP ResNet: real vocabulary and context (the prompts' token ids need them), small widths and depths
TINY = dict(vision_layers=(1, 1, 1, 1), vision_width=8, embed_dim=32, pool_tokens=50, context_length=77,
            vocab_size=49408, text_width=64, text_layers=1)
#: OpenAI's RN50 (facts from CLIP's build_model applied to RN50.pt / pyiqa's clip_model.py)
RN50 = dict(vision_layers=(3, 4, 6, 3), vision_width=64, embed_dim=1024, pool_tokens=50, context_length=77,
            vocab_size=49408, text_width=512, text_layers=12)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # the tests write archives with jit

EXTRA = ("input_resolution", "context_length", "vocab_size")
#: shared learned context of CLIP-IQA+ (16 vectors of the text width)
PLUS_CTX_SHAPE = (16, TINY["text_width"])


class _Traceable(CLIPModel):
    """Our CLIP with an image method to trace, as OpenAI traced theirs (same state-dict keys)."""

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def _tiny_clip() -> _Traceable:
    torch.manual_seed(0)
    model = _Traceable(**TINY)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.2 if "visual" in name else 0.05)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.running_var.uniform_(0.5, 2.0)
        model.logit_scale.fill_(math.log(100.0))
    for key, value in zip(EXTRA, (224, 77, 49408)):  # OpenAI's archive holds these as buffers
        model.register_buffer(key, torch.tensor(value))
    return model.eval()


def _write_archive(model: nn.Module, path: Path) -> Path:
    """A TorchScript archive like OpenAI's RN50.pt: traced, image tower in fp16, non-weight int buffers."""
    traced = torch.jit.trace_module(model, {"encode_image": torch.rand(1, 3, 64, 64)})
    traced.visual.half()
    torch.jit.save(traced, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clipiqa")
    (root / "iqa").mkdir()
    archive = _write_archive(_tiny_clip(), root / "iqa" / "RN50.pt")
    state = {k: v for k, v in read_torchscript_state_dict(archive).items() if k not in EXTRA}
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "RN50.safetensors"))
    torch.save(state, root / "RN50_state.pth")
    torch.manual_seed(1)
    torch.save((torch.randn(PLUS_CTX_SHAPE) * 0.05).half(), root / "iqa" / PLUS_FILE)
    return {"root": root, "archive": archive}


@pytest.fixture(scope="module")
def metric(files) -> CLIPIQAMetric:
    return CLIPIQAMetric.load(models_dir=files["root"])


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    smooth = torch.nn.functional.interpolate(torch.rand(3, 3, 8, 8, generator=g), size=(64, 80), mode="bilinear")
    return torch.cat([smooth, torch.rand(1, 3, 64, 80, generator=g)]).permute(0, 2, 3, 1).contiguous()


def test_torchscript_reader_gives_the_modules_state_dict(tmp_path):
    class Block(nn.Module):
        def __init__(self, cin: int):
            super().__init__()
            self.lin = nn.Linear(cin, 4, bias=False)
            self.norm = nn.BatchNorm1d(4).half()
            self.register_buffer("count", torch.tensor(7))
            self.mask = torch.ones(2, 2)  # a plain tensor attribute: not in state_dict

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.lin(x).half()).float() + self.mask.sum()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(Block(3), Block(4))
            self.proj = nn.Parameter(torch.randn(4, 4)[:, 1:3])  # a strided view into a larger storage

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks(x) @ self.proj

    net = Net().eval()
    for kind, make in (("script", torch.jit.script), ("trace", lambda m: torch.jit.trace(m, torch.rand(2, 3)))):
        path = tmp_path / f"{kind}.pt"
        torch.jit.save(make(net), str(path))
        state, expected = read_torchscript_state_dict(path), net.state_dict()
        assert list(sorted(state)) == list(sorted(expected)), kind
        for key, value in expected.items():
            assert state[key].dtype == value.dtype and torch.equal(state[key], value), (kind, key)


def test_reader_refuses_anything_but_modules_and_tensors(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "RN50.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("RN50/data.pkl", pickle.dumps({"x": Evil()}, protocol=2))
        z.writestr("RN50/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(HonestFaceError, match="refusing to load"):
        read_clip_state_dict(path)
    assert not marker.exists()


def test_real_rn50_format_is_pinned():
    with torch.device("meta"):
        model = CLIPModel(**RN50)
    state = model.state_dict()
    assert len(state) + len(EXTRA) == 492  # OpenAI's RN50.pt state dict (pyiqa's build_model drops the 3 extras)
    shapes = {
        "visual.conv1.weight": (32, 3, 3, 3),
        "visual.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "visual.layer4.2.bn3.running_var": (2048,),
        "visual.attnpool.positional_embedding": (50, 2048),
        "visual.attnpool.c_proj.weight": (1024, 2048),
        "token_embedding.weight": (49408, 512),
        "positional_embedding": (77, 512),
        "transformer.resblocks.11.attn.in_proj_weight": (1536, 512),
        "transformer.resblocks.11.mlp.c_fc.weight": (2048, 512),
        "text_projection": (512, 1024),
        "logit_scale": (),
    }
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert clip_sizes(state) == RN50


def test_scores_contract(metric, images):
    scores = metric(images)
    assert scores.shape == (4,) and scores.dtype == torch.float64 and scores.device.type == "cpu"
    assert torch.isfinite(scores).all() and ((scores > 0) & (scores < 1)).all()
    assert torch.equal(scores, metric(images))  # deterministic
    singles = torch.cat([metric(img[None]) for img in images])
    torch.testing.assert_close(scores, singles, rtol=0, atol=1e-6)
    assert len(set(scores.tolist())) == 4  # different images, different scores
    assert all(k.startswith("visual.") for k in metric.state_dict())  # the text tower is dropped after loading


def test_same_scores_from_archive_safetensors_and_state_dict(files, metric, images):
    reference = metric(images)
    for path in (files["archive"], files["root"] / "RN50.safetensors", files["root"] / "RN50_state.pth"):
        torch.testing.assert_close(CLIPIQAMetric.load(path=path)(images), reference, rtol=0, atol=1e-6)


def test_scores_match_the_clip_model(files, metric, images):
    """Independent recomputation with the full CLIP model: the pyiqa formula on the first pair (Good/bad image)."""
    model = CLIPModel(**TINY)
    model.load_state_dict(read_clip_state_dict(files["archive"]))
    model.eval()
    with torch.no_grad():
        feats = []
        for ids in ((886, 2867), (2103, 2867)):
            tokens = torch.tensor([[49406, *ids, 49407] + [0] * 73])
            feats.append(model.encode_text(model.token_embedding(tokens), torch.tensor([3])))
        text = torch.nn.functional.normalize(torch.cat(feats), dim=-1)
        x = (images[:1].permute(0, 3, 1, 2) - metric.mean) / metric.std
        img = torch.nn.functional.normalize(model.visual(x), dim=-1)
        p_good = (model.logit_scale.exp() * img @ text.T).softmax(-1)[0, 0]
    torch.testing.assert_close(metric.text_features[:2], text, rtol=0, atol=1e-6)
    assert 0 < p_good < 1


def test_clipiqa_plus(files, images):
    plus = CLIPIQAMetric.load(models_dir=files["root"], variant="clipiqa+")
    scores = plus(images)
    assert plus.name == "C-IQA" and plus.variant == "clipiqa+" and scores.shape == (4,) and torch.isfinite(scores).all()
    assert plus.text_features.shape == (2, TINY["embed_dim"])
    bad = files["root"] / "bad_ctx.pth"
    torch.save(torch.zeros(3, 16, 64), bad)
    with pytest.raises(HonestFaceError, match="learned prompts"):
        CLIPIQAMetric.load(models_dir=files["root"], variant="clipiqa+", prompts_path=bad)
    with pytest.raises(MetricUnavailable, match=PLUS_FILE.replace("+", r"\+")):
        CLIPIQAMetric.load(path=files["archive"], variant="clipiqa+")
    with pytest.raises(HonestFaceError, match="variant"):
        CLIPIQAMetric.load(path=files["archive"], variant="clipiqa++")


def test_missing_file_names_file_and_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(MetricUnavailable) as err:
        CLIPIQAMetric.load(models_dir=tmp_path / "models")
    message = str(err.value)
    assert message.startswith("C-IQA skipped") and CLIP_FILES[0] in message
    for folder in ("models/iqa", "torch/hub/clip", "home/.cache/clip"):
        assert str(tmp_path / folder) in message
    with pytest.raises(MetricUnavailable, match="not found"):
        CLIPIQAMetric.load(path=tmp_path / "nowhere" / "RN50.pt")


def test_clip_cache_folder_is_searched(files, tmp_path, monkeypatch, images):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / ".cache" / "clip"
    cache.mkdir(parents=True)
    (cache / "RN50.pt").write_bytes(files["archive"].read_bytes())
    assert CLIPIQAMetric.load(models_dir=tmp_path / "models")(images[:1]).shape == (1,)


def test_wrong_or_corrupt_files(files, tmp_path):
    junk = tmp_path / "RN50.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(HonestFaceError, match="RN50.pt"):
        CLIPIQAMetric.load(path=junk)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(files["archive"].read_bytes()[:200_000])
    with pytest.raises(HonestFaceError, match="truncated.pt"):
        CLIPIQAMetric.load(path=truncated)
    state = read_clip_state_dict(files["archive"])
    del state["visual.attnpool.c_proj.bias"]
    torch.save(state, tmp_path / "missing_key.pth")
    with pytest.raises(HonestFaceError, match="missing keys: visual.attnpool.c_proj.bias"):
        CLIPIQAMetric.load(path=tmp_path / "missing_key.pth")
    torch.save({"visual.proj": torch.zeros(4, 4), "text_projection": torch.zeros(4, 4)}, tmp_path / "vit.pth")
    with pytest.raises(HonestFaceError, match="not a CLIP ResNet"):
        CLIPIQAMetric.load(path=tmp_path / "vit.pth")
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buffer)
    (tmp_path / "other.pth").write_bytes(buffer.getvalue())
    with pytest.raises(HonestFaceError):
        CLIPIQAMetric.load(path=tmp_path / "other.pth")


def test_bad_input(metric):
    with pytest.raises(HonestFaceError, match="at least 32x32"):
        metric(torch.rand(1, 20, 64, 3))
    with pytest.raises(HonestFaceError, match="images"):
        metric([[0.5]])
    with pytest.raises(HonestFaceError, match="images"):
        metric(torch.rand(1, 64, 64, 5))
