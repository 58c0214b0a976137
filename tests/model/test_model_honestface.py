"""HonestFaceModel end to end on the tiny config: shapes, dtypes, frozen parts, references, blind mode."""

from __future__ import annotations

import pytest
import torch

from honestface_core.errors import HonestFaceError
from honestface_core.model.config import HonestFaceConfig
from honestface_core.face.references import ReferenceSet
from honestface_core.model.honestface import EncodedReferences, HonestFaceModel, ReferenceBatch
from honestface_core.model.iresnet import FaceBackbone, IResNet

TRAINABLE_PREFIXES = ("projector.", "identity_encoder.", "feature_extractor.", "fusion.")
FROZEN_PREFIXES = ("vre.", "generator.vae.", "backbone.")


@pytest.fixture(scope="module")
def model() -> HonestFaceModel:
    torch.manual_seed(0)
    backbone = FaceBackbone(IResNet((1, 1, 1, 1), (8, 16, 32, 64)))
    m = HonestFaceModel(HonestFaceConfig.tiny(), backbone=backbone)
    m.add_lora()
    with torch.no_grad():  # non-zero LoRA so it matters
        for name, p in m.generator.unet.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    return m.eval()


def images(n: int, size: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes_through_every_stage(model):
    lq = images(2, 512)
    refs = [images(3, 512, seed=1), images(1, 512, seed=2)]
    with torch.no_grad():
        codes, idx = model.vre(lq)
        assert codes.shape == (2, 77, 32) and idx.shape == (2, 77)
        assert model.prompt_lq(lq).shape == (2, 77, 1024)
        p = model.encode_prompt(lq, refs)
        assert p.shape == (2, 97, 1024) and p.dtype == torch.float32
        z = model.generator.encode(lq)
        assert z.shape == (2, 4, 64, 64)
        z_hat = model.restore_latent(z, p)
        assert z_hat.shape == z.shape
        out = model(lq, refs)
    assert out.shape == lq.shape and out.min() >= -1 and out.max() <= 1 and torch.isfinite(out).all()


def test_frozen_and_trainable_parameters(model):
    model.train()
    named = dict(model.named_parameters())
    for name, p in named.items():
        if name.startswith(FROZEN_PREFIXES):
            assert not p.requires_grad, name
        elif name.startswith("generator.unet."):
            assert p.requires_grad == (".lora_A." in name or ".lora_B." in name), name
        else:
            assert name.startswith(TRAINABLE_PREFIXES) and p.requires_grad, name
    assert any(".lora_" in n for n in named) and not model.vre.training and not model.backbone.training
    model.zero_grad(set_to_none=True)
    lq = images(2, 64)
    out = model(lq, [images(2, 64, seed=3), images(1, 64, seed=4)], clamp=False)
    out.square().mean().backward()
    for name, p in named.items():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"no grad for trainable {name}"
        else:
            assert p.grad is None, f"frozen {name} got a grad"
    grads = [named[n].grad.abs().sum() for n in named if ".lora_A." in n]
    assert sum(grads) > 0
    model.zero_grad(set_to_none=True)
    model.eval()


def test_reference_order_and_counts(model):
    lq = images(1, 64)
    refs = images(8, 64, seed=5)
    with torch.no_grad():
        outs = {}
        for k in (1, 3, 8):
            outs[k] = model.encode_prompt(lq, [refs[:k]])
            assert outs[k].shape == (1, 97, 1024)
        shuffled = model.encode_prompt(lq, [refs[torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])]])
        torch.testing.assert_close(shuffled, outs[8], rtol=1e-4, atol=1e-4)
        assert not torch.allclose(outs[1], outs[3])
        # padded tuple and ReferenceBatch forms give the same prompt as the list form
        batch = ReferenceBatch.from_list([refs[:3], refs[:1]])
        lq2 = lq.expand(2, -1, -1, -1)
        p_list = model.encode_prompt(lq2, [refs[:3], refs[:1]])
        torch.testing.assert_close(model.encode_prompt(lq2, (batch.images, batch.mask)), p_list)
        torch.testing.assert_close(p_list[0], outs[3][0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(p_list[1], outs[1][0], rtol=1e-4, atol=1e-4)
        # precomputed embeddings and features (cached per identity) give the same prompt
        flat = batch.images.flatten(0, 1)
        cached = ReferenceBatch(None, batch.mask, model.backbone.embed(flat).unflatten(0, (2, 3)),
                                model.backbone.features(flat).unflatten(0, (2, 3)))
        torch.testing.assert_close(model.encode_prompt(lq2, cached), p_list)


def test_encoded_references_stack_per_face(model):
    """``encode_references`` of a set equals the backbone's pieces; ``ReferenceBatch.from_encoded`` expands one shared
    set without copies and pads different sets (and blind faces) so that each face's prompt is its own."""
    lq = images(3, 64)
    res = model.config.vre.resolution  # reference crops are resized to it
    a, b = images(3, res, seed=7), images(1, res, seed=8)
    with torch.no_grad():
        refset = ReferenceSet((a.permute(0, 2, 3, 1) + 1) / 2, torch.randn(3, 512), ["a", "b", "c"], [], "sface")
        enc_a = model.encode_references(refset)  # another encoder's embeddings: recomputed with the backbone
        torch.testing.assert_close(enc_a.embeddings, model.backbone.embed(a), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(enc_a.features, model.backbone.features(a), rtol=1e-5, atol=1e-5)
        enc_b = EncodedReferences(model.backbone.embed(b), model.backbone.features(b))
        shared = ReferenceBatch.from_encoded([enc_a] * 3)
        assert shared.mask.all() and shared.embeddings.shape == (3, 3, 512)
        assert shared.embeddings.data_ptr() == enc_a.embeddings.data_ptr() and shared.embeddings.stride(0) == 0
        mixed = ReferenceBatch.from_encoded([enc_a, enc_b, None])
        assert mixed.mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
        p = model.encode_prompt(lq, mixed)
        torch.testing.assert_close(p[0], model.encode_prompt(lq[:1], [a])[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(p[1], model.encode_prompt(lq[1:2], [b])[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(p[2], model.encode_prompt(lq[2:], None)[0], rtol=1e-4, atol=1e-4)
        assert ReferenceBatch.from_encoded([None, None]).mask.shape == (2, 0)


def test_blind_mode(model):
    lq = images(2, 64)
    with torch.no_grad():
        p_blind = model.encode_prompt(lq, None)
        assert torch.equal(model.encode_prompt(lq, [None, None]), p_blind)
        mixed = model.encode_prompt(lq, [images(2, 64, seed=6), None])
        torch.testing.assert_close(mixed[1], p_blind[1])  # a blind sample in a mixed batch uses the null tokens
        assert not torch.allclose(mixed[0], p_blind[0])
        assert model(lq).shape == lq.shape
    no_backbone = HonestFaceModel(HonestFaceConfig.tiny()).eval()
    with torch.no_grad():
        assert no_backbone(lq).shape == lq.shape
    with pytest.raises(HonestFaceError, match="backbone"):
        no_backbone.encode_prompt(lq, [images(1, 64), None])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(model, dtype):  # CPU half precision is slow: small inputs
    half = HonestFaceModel(HonestFaceConfig.tiny(), backbone=FaceBackbone(IResNet((1, 1, 1, 1), (8, 16, 32, 64))))
    half.load_state_dict(model.state_dict(), strict=False)
    half = half.to(dtype).eval()
    lq, refs = images(1, 64).to(dtype), [images(2, 64).to(dtype)]
    with torch.no_grad():
        p = half.encode_prompt(lq, refs)
        out = half(lq, refs)
    assert p.dtype == dtype and out.dtype == dtype and torch.isfinite(out.float()).all()


def test_bad_inputs(model):
    sface = ReferenceSet(torch.rand(1, 64, 64, 3), torch.randn(1, 128), ["a"], [], "sface")
    with pytest.raises(HonestFaceError, match="128-d embeddings"):
        model.encode_references(sface)
    with pytest.raises(HonestFaceError, match="no face backbone"):
        HonestFaceModel(HonestFaceConfig.tiny()).encode_references(
            ReferenceSet(torch.rand(1, 64, 64, 3), torch.randn(1, 512), ["a"], [], "sface"))
    with pytest.raises(HonestFaceError, match="lq"):
        model.encode_prompt(torch.rand(1, 512, 512, 3))
    with pytest.raises(HonestFaceError, match="references"):
        model.encode_prompt(images(2), [images(1)])
    with pytest.raises(HonestFaceError, match="crop shapes"):
        ReferenceBatch.from_list([images(1, 64), images(1, 128)])
