"""CLIP-IQA (Wang, Chan & Loy, "Exploring CLIP for Assessing the Look and Feel of Images", AAAI 2023),
no-reference image quality from OpenAI's CLIP RN50 and antonym prompts.

Our implementation of the model as IQA-PyTorch (pyiqa) runs it, so the scores are pyiqa's ``clipiqa`` (default) and
``clipiqa+`` numbers:

* input RGB in [0, 1] at its own size (no resize or crop), normalised with OpenAI CLIP's mean/std;
* CLIP's modified ResNet-50 image tower; its attention pool runs *without* positional embedding (pyiqa's default
  ``pos_embedding=False``, as the paper), which lets it take any image size;
* ``clipiqa``: cosine similarity (times ``exp(logit_scale)``) with pyiqa's five antonym prompt pairs
  ("Good/bad image", "Sharp/blurry image", "sharp/blurry edges", "High/low resolution image", "Noise-free/noisy
  image"), softmax within each pair, and the positive probability averaged over the pairs (score in 0..1, higher is
  better). pyiqa ensembles these five pairs; the paper used "Good photo."/"Bad photo." alone;
* ``clipiqa+``: the pair "Good photo.."/"Bad photo.." with 16 learned context vectors (CoOp) around the class words,
  as pyiqa's ``PromptLearner`` builds them.

The prompts are fixed, so instead of CLIP's BPE tokenizer (its vocabulary is not bundled here) we keep the token ids
that CLIP's tokenizer gives for them (our choice; checked against ``clip.tokenize`` and ``open_clip.tokenize``). The
text features are computed once when the model is loaded and the text tower is then dropped (our choice: saves about
60% of the model's memory; the scores do not change). Images are scored one at a time (our choice: bounds memory;
the same scores as a batch).

The CLIP weights are OpenAI's ``RN50.pt``, a TorchScript archive. It is read without ``torch.jit.load`` and without
general unpickling: :func:`read_torchscript_state_dict` only rebuilds tensors. A ``.safetensors`` or plain
state-dict file with OpenAI's key names (e.g. open_clip's ``open_clip_model.safetensors`` of
``timm/resnet50_clip.openai``) works too. Network sizes are read from the weights, as CLIP's ``build_model`` does.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from honestface_core.errors import HonestFaceError
from honestface_core.files.images import as_rgb_batch
from honestface_core.files.weight_files import load_weights, read_state_dict, read_weights_file
from honestface_core.metrics.iqa_files import find_iqa_file
from honestface_core.metrics.torchscript_weights import is_torchscript_archive, read_torchscript_state_dict

#: file names of the CLIP RN50 weights: OpenAI's TorchScript archive, or a state dict with OpenAI's key names
CLIP_FILES = ("RN50.pt", "RN50.safetensors")
#: pyiqa's file of the learned CLIP-IQA+ context vectors (a tensor, ``(16, 512)`` or ``(2, 16, 512)``)
PLUS_FILE = "CLIP-IQA+_learned_prompts-603f3273.pth"
VARIANTS = ("clipiqa", "clipiqa+")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: CLIP tokenizer: start/end-of-text ids, vocabulary size; padding id 0 (as ``clip.tokenize``)
SOT, EOT, VOCAB_SIZE = 49406, 49407, 49408
#: pyiqa's clipiqa prompt pairs (positive first) as CLIP's tokenizer encodes them, without start/end tokens
PAIRS = (
    ("Good image", (886, 2867), "bad image", (2103, 2867)),
    ("Sharp image", (8157, 2867), "blurry image", (21977, 2867)),
    ("sharp edges", (8157, 20938), "blurry edges", (21977, 20938)),
    ("High resolution image", (1400, 9977, 2867), "low resolution image", (1042, 9977, 2867)),
    ("Noise-free image", (9307, 268, 1139, 2867), "noisy image", (33495, 2867)),
)
#: clipiqa+ class words "Good photo.." / "Bad photo.." (tokens good, photo, ..) and the number of context vectors
PLUS_CLASSES = ((886, 1125, 852), (2103, 1125, 852))
PLUS_N_CTX = 16
#: smallest image side: the image tower downsamples by 32 (31 is its exact minimum; 32 is our choice)
MIN_SIDE = 32
#: buffers of OpenAI's archive that are not weights (CLIP's build_model drops them too)
_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_WHAT = "the CLIP RN50 model (OpenAI's RN50.pt or a state dict with its key names)"


def read_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """CLIP weights with OpenAI's key names from a TorchScript archive (``RN50.pt``), ``.safetensors`` or plain
    state-dict file; non-weight buffers dropped, floats as float32, BatchNorm's unused ``num_batches_tracked``
    filled in where a file lacks it (as torch's BatchNorm loading does for old state dicts)."""
    path = Path(path)
    is_script = path.suffix != ".safetensors" and is_torchscript_archive(path)
    state = read_torchscript_state_dict(path) if is_script else read_state_dict(path, _WHAT)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k not in _EXTRA_KEYS}
    for key in [k for k in state if k.endswith(".running_var")]:
        state.setdefault(key[: -len("running_var")] + "num_batches_tracked", torch.tensor(0))
    return state


# ----------------------------------------------------------------------------------------------------------------
# CLIP with the modified ResNet image tower (OpenAI's module and parameter names)


class _Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased striding: an average pool before the strided part."""

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.stride = stride
        self.downsample = None
        if stride > 1 or cin != planes * 4:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(cin, planes * 4, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * 4)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        if self.stride > 1:
            out = F.avg_pool2d(out, self.stride)
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _AttentionPool(nn.Module):
    """Multi-head attention of the mean token over all tokens (the mean included), without positional embedding
    (pyiqa's clipiqa default); ``positional_embedding`` is kept so the weights load."""

    def __init__(self, pos_tokens: int, dim: int, heads: int, out_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(pos_tokens, dim))
        self.k_proj, self.q_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        tokens = x.flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], 1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(tokens[:, :1])), split(self.k_proj(tokens)),
                                             split(self.v_proj(tokens)))
        return self.c_proj(out.transpose(1, 2).reshape(b, c))


class _ModifiedResNet(nn.Module):
    """CLIP's image tower: 3-conv stem with average pool, four bottleneck stages, attention pool."""

    def __init__(self, layers: tuple[int, ...], width: int, out_dim: int, pos_tokens: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(width // 2)
        self.conv2, self.bn2 = nn.Conv2d(width // 2, width // 2, 3, 1, 1, bias=False), nn.BatchNorm2d(width // 2)
        self.conv3, self.bn3 = nn.Conv2d(width // 2, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        cin = width
        for i, blocks in enumerate(layers):
            planes = width * 2 ** i
            stage = [_Bottleneck(cin, planes, 1 if i == 0 else 2)]
            stage += [_Bottleneck(planes * 4, planes, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            cin = planes * 4
        self.attnpool = _AttentionPool(pos_tokens, cin, cin // 64, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(bn(conv(x)))
        x = F.avg_pool2d(x, 2)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _TextBlock(nn.Module):
    """Pre-norm transformer block of CLIP's text tower."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)), ("gelu", _QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _TextTransformer(nn.Module):
    def __init__(self, width: int, layers: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[_TextBlock(width, width // 64) for _ in range(layers)])


class CLIPModel(nn.Module):
    """OpenAI CLIP with the modified-ResNet image tower; parameter names and shapes are OpenAI's (and pyiqa's,
    open_clip's), so their weights load with ``strict=True``. Sizes as in :func:`clip_sizes`."""

    def __init__(self, vision_layers: tuple[int, ...], vision_width: int, embed_dim: int, pool_tokens: int,
                 context_length: int, vocab_size: int, text_width: int, text_layers: int):
        super().__init__()
        self.visual = _ModifiedResNet(tuple(vision_layers), vision_width, embed_dim, pool_tokens)
        self.transformer = _TextTransformer(text_width, text_layers)
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, text_width))
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.empty(text_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))

    def encode_text(self, embeddings: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(N, context_length, width)`` -> ``(N, embed_dim)`` features at the end-of-text
        positions ``eot`` ``(N,)``; causal attention, as CLIP."""
        n = embeddings.shape[1]
        mask = torch.full((n, n), float("-inf"), device=embeddings.device).triu(1)
        x = embeddings + self.positional_embedding
        for block in self.transformer.resblocks:
            x = block(x, mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), eot] @ self.text_projection


def clip_sizes(state: dict[str, torch.Tensor], source: str = "CLIP weights") -> dict:
    """:class:`CLIPModel` arguments read from a CLIP ResNet state dict (stages counted from the keys, widths from
    the shapes; heads are width / 64, as CLIP's ``build_model``).

    Raises:
        HonestFaceError: the weights are not a CLIP ResNet model.
    """
    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})

    try:
        sizes = dict(
            vision_layers=tuple(count(f"visual.layer{i}.") for i in range(1, 5)),
            vision_width=state["visual.layer1.0.conv1.weight"].shape[0],
            embed_dim=state["text_projection"].shape[1],
            pool_tokens=state["visual.attnpool.positional_embedding"].shape[0],
            context_length=state["positional_embedding"].shape[0],
            vocab_size=state["token_embedding.weight"].shape[0],
            text_width=state["ln_final.weight"].shape[0],
            text_layers=count("transformer.resblocks."),
        )
    except (KeyError, IndexError) as err:
        raise HonestFaceError(source, f"is not a CLIP ResNet model (no {err})",
                              "Use OpenAI's RN50.pt (CLIP-IQA is defined on CLIP RN50)") from err
    if min(sizes["vision_layers"]) == 0 or sizes["vision_width"] < 2 or sizes["text_width"] < 64 \
            or sizes["text_width"] % 64 or (sizes["vision_width"] * 32) % 64:
        raise HonestFaceError(source, f"has unsupported sizes {sizes}", "Use OpenAI's RN50.pt")
    return sizes


# ----------------------------------------------------------------------------------------------------------------
# The metric


def clip_cache_dirs() -> list[Path]:
    """Where CLIP code keeps ``RN50.pt``: pyiqa's ``<torch hub dir>/clip`` and OpenAI clip's ``~/.cache/clip``."""
    return [Path(torch.hub.get_dir()) / "clip", Path.home() / ".cache" / "clip"]


def _read_context(path: Path, width: int) -> torch.Tensor:
    """pyiqa's learned CLIP-IQA+ context: a saved tensor ``(16, width)`` (shared) or ``(2, 16, width)``."""
    what = f"the CLIP-IQA+ learned prompts ({PLUS_FILE})"
    ctx = read_weights_file(path, what)
    shapes = ((PLUS_N_CTX, width), (2, PLUS_N_CTX, width))
    if not isinstance(ctx, torch.Tensor) or not ctx.is_floating_point() or tuple(ctx.shape) not in shapes:
        shape = tuple(ctx.shape) if isinstance(ctx, torch.Tensor) else type(ctx).__name__
        raise HonestFaceError(f"'{path}'", f"is not {what}: expected a tensor ({PLUS_N_CTX}, {width}) or "
                              f"(2, {PLUS_N_CTX}, {width}), got {shape}", f"Use pyiqa's {PLUS_FILE}")
    return ctx.float().expand(2, PLUS_N_CTX, width)


@torch.no_grad()
def _text_features(clip: CLIPModel, ctx: torch.Tensor | None) -> torch.Tensor:
    """L2-normalised features of the prompts, positive/negative interleaved: ``(2 * pairs, embed_dim)``."""
    length, embed = clip.positional_embedding.shape[0], clip.token_embedding

    def tokens(ids: list[int]) -> torch.Tensor:
        return embed(torch.tensor(ids + [0] * (length - len(ids))))

    if ctx is None:
        prompts = [[SOT, *ids, EOT] for pair in PAIRS for ids in (pair[1], pair[3])]
        embeddings = torch.stack([tokens(p) for p in prompts])
        eot = torch.tensor([len(p) - 1 for p in prompts])
    else:  # pyiqa's PromptLearner, class in the middle: SOT, ctx[:8], class words, ctx[8:], EOT, padding
        half = PLUS_N_CTX // 2
        embeddings = torch.stack([
            torch.cat([embed(torch.tensor([SOT])), c[:half], embed(torch.tensor(words)), c[half:],
                       tokens([EOT])[: length - 1 - PLUS_N_CTX - len(words)]])
            for words, c in zip(PLUS_CLASSES, ctx)])
        eot = torch.full((2,), 1 + PLUS_N_CTX + len(PLUS_CLASSES[0]))
    return F.normalize(clip.encode_text(embeddings, eot), dim=-1)


class CLIPIQAMetric(nn.Module):
    """CLIP-IQA score per image in 0..1 (higher is better): pyiqa's ``clipiqa`` (default) or ``clipiqa+``."""

    name = "C-IQA"

    def __init__(self, visual: nn.Module, text_features: torch.Tensor, logit_scale: torch.Tensor,
                 variant: str = "clipiqa"):
        super().__init__()
        self.variant = variant
        self.visual = visual
        self.register_buffer("text_features", text_features, persistent=False)
        self.register_buffer("scale", logit_scale.exp(), persistent=False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def load(cls, models_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             path: str | os.PathLike | None = None, variant: str = "clipiqa",
             prompts_path: str | os.PathLike | None = None) -> "CLIPIQAMetric":
        """CLIP-IQA from the CLIP RN50 weights at ``path`` or found as ``RN50.pt`` / ``RN50.safetensors`` in
        ``<models_dir>/iqa``, pyiqa's cache, ``<torch hub dir>/clip`` or ``~/.cache/clip``; for
        ``variant="clipiqa+"`` also pyiqa's learned prompts (``prompts_path`` or found as :data:`PLUS_FILE`).

        Raises:
            MetricUnavailable: a weight file is missing.
            HonestFaceError: unknown ``variant``, or a file that is not what it should be.
        """
        if variant not in VARIANTS:
            raise HonestFaceError("CLIP-IQA variant", f"{variant!r} is not known", f"Use one of {', '.join(VARIANTS)}")
        file = find_iqa_file(cls.name, CLIP_FILES, models_dir, path, extra_folders=clip_cache_dirs())
        ctx_file = find_iqa_file("C-IQA (clipiqa+)", [PLUS_FILE], models_dir, prompts_path) if variant == "clipiqa+" else None
        state = read_clip_state_dict(file)
        sizes = clip_sizes(state, f"'{file}'")
        if sizes["vocab_size"] != VOCAB_SIZE or sizes["context_length"] < 1 + PLUS_N_CTX + 4:
            raise HonestFaceError(f"'{file}'", f"has a text vocabulary of {sizes['vocab_size']} tokens and context "
                                  f"{sizes['context_length']}, CLIP's tokenizer needs {VOCAB_SIZE} and at least 21",
                                  "Use OpenAI's RN50.pt")
        clip = CLIPModel(**sizes)
        load_weights(clip, state, file, _WHAT)
        clip.eval()
        ctx = _read_context(ctx_file, sizes["text_width"]) if ctx_file else None
        metric = cls(clip.visual, _text_features(clip, ctx), clip.logit_scale.detach(), variant)
        return metric.to(device).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` IMAGE in [0, 1], any size of at least 32x32 -> ``(B,)`` float64 scores on CPU."""
        x = as_rgb_batch(images, "images")
        h, w = x.shape[1:3]
        if min(h, w) < MIN_SIDE:
            raise HonestFaceError("input 'images'", f"image is {w}x{h} pixels, CLIP-IQA needs at least "
                                  f"{MIN_SIDE}x{MIN_SIDE}", "Use a larger image")
        scores = []
        for img in x:
            img = (img.to(self.mean.device).permute(2, 0, 1)[None] - self.mean) / self.std
            logits = self.scale * F.normalize(self.visual(img), dim=-1) @ self.text_features.T
            scores.append(logits.view(1, -1, 2).softmax(-1)[..., 0].mean(1))
        return torch.cat(scores).double().cpu()


__all__ = ["CLIPIQAMetric", "CLIPModel", "CLIP_FILES", "PLUS_FILE", "clip_cache_dirs", "clip_sizes",
           "read_clip_state_dict"]
