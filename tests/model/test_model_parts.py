"""HonestFace model parts: config round trip, VRE token selection, x0 formula, embedders, fusion."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from honestface_core.model.config import HonestFaceConfig, load_shipped_config
from honestface_core.model.embedders import FeatureExtractor, IdentityEncoder
from honestface_core.model.fusion import FeatureFusion
from honestface_core.model.generator import OneStepGenerator, alpha_bar
from honestface_core.model.vre import TokenProjector, VisualRepresentationEmbedder, select_codebook_tokens


def reference_selection(z: torch.Tensor, codebook: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Straightforward per-sample loop (OSDFace's algorithm, fixed for batches): indices (B, T), -1 = empty."""
    out = torch.full((z.shape[0], num_tokens), -1, dtype=torch.long)
    for b in range(z.shape[0]):
        flat = z[b].flatten(1).t().float()
        dist = torch.cdist(flat[None], codebook.float()[None])[0] ** 2
        best, idx = dist.min(dim=1)
        seen: list[int] = []
        for pos in best.argsort(stable=True).tolist():
            code = int(idx[pos])
            if code not in seen:
                seen.append(code)
            if len(seen) == num_tokens:
                break
        out[b, : len(seen)] = torch.tensor(seen)
    return out


def test_config_json_round_trip():
    for cfg in (HonestFaceConfig(), HonestFaceConfig.tiny(), HonestFaceConfig.tiny("osdface")):
        again = HonestFaceConfig.from_json(cfg.to_json())
        assert again == cfg
        assert isinstance(again.vre.channel_mult, tuple)
    full = HonestFaceConfig()
    assert (full.vre.base_channels, full.vre.channel_mult, full.vre.codebook_size, full.vre.codebook_dim) == (64, (1, 2, 2, 2, 4, 8), 1024, 512)
    assert (full.lora.rank, full.lora.alpha, full.generator.timestep, full.num_prompt_tokens) == (16, 16.0, 399, 77 + 4 + 16)
    assert full.generator.unet["cross_attention_dim"] == 1024 and full.generator.vae["scaling_factor"] == 0.18215
    with pytest.raises(ValueError, match="unknown"):
        HonestFaceConfig.from_dict({**full.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="variant"):
        HonestFaceConfig(variant="nope")


def test_vre_shapes_full_size_structure():
    """Full-size VRE config: 512 input -> 512 x 16 x 16 (checked on the meta device, no compute)."""
    cfg = HonestFaceConfig().vre
    with torch.device("meta"):
        vre = VisualRepresentationEmbedder(cfg)
        z = vre.encode(torch.empty(2, 3, 512, 512))
    assert tuple(z.shape) == (2, 512, 16, 16)
    assert tuple(vre.codebook.weight.shape) == (1024, 512)
    assert [len(s.attn) for s in vre.encoder.down] == [0, 0, 0, 0, 0, 2]  # attention only at 16x16
    proj = TokenProjector(512, 256, 1024)
    assert [tuple(m.weight.shape) for m in (proj.conv1, proj.conv2)] == [(256, 512, 1), (1024, 256, 1)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_selection_matches_reference_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    codebook = torch.randn(200, 16, generator=gen)
    z = torch.randn(4, 16, 16, 16, generator=gen)
    tokens, idx = select_codebook_tokens(z, codebook, 77)
    assert torch.equal(idx, reference_selection(z, codebook, 77))
    assert tokens.shape == (4, 77, 16)
    for b in range(4):
        assert len(set(idx[b].tolist())) == 77  # 77 distinct codes
        assert torch.equal(tokens[b], codebook[idx[b]])
        # ordered by distance: each code's best distance over the positions is non-decreasing
        d = torch.cdist(z[b].flatten(1).t()[None], codebook[None])[0] ** 2
        best, arg = d.min(dim=1)
        per_code = torch.stack([best[arg == c].min() for c in idx[b]])
        assert torch.all(per_code[1:] >= per_code[:-1] - 1e-4)


def test_selection_with_few_distinct_codes_pads_zero_rows():
    gen = torch.Generator().manual_seed(0)
    codebook = torch.randn(100, 8, generator=gen)
    z = codebook[torch.tensor([3, 7, 3, 9] * 64)].t().reshape(1, 8, 16, 16) + 0.01 * torch.randn(1, 8, 16, 16, generator=gen)
    z = torch.cat([z, torch.randn(1, 8, 16, 16, generator=gen)])
    tokens, idx = select_codebook_tokens(z, codebook, 77)
    assert sorted(idx[0, :3].tolist()) == [3, 7, 9] and torch.all(idx[0, 3:] == -1)
    assert torch.all(tokens[0, 3:] == 0) and torch.equal(idx, reference_selection(z, codebook, 77))
    small = torch.randn(10, 8)  # codebook smaller than 77
    tokens, idx = select_codebook_tokens(torch.randn(2, 8, 16, 16), small, 77)
    assert tokens.shape == (2, 77, 8) and torch.all(idx[:, 10:] == -1)


def test_x0_matches_diffusers_scheduler_step():
    sched_cfg = load_shipped_config("scheduler")
    abar = alpha_bar(sched_cfg, 399)
    assert abar == pytest.approx(0.4261, abs=1e-4)
    cfg = HonestFaceConfig.tiny().generator
    gen = OneStepGenerator(cfg)
    z, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    scheduler = DDPMScheduler.from_config(sched_cfg)
    expected = scheduler.step(eps, 399, z).pred_original_sample
    torch.testing.assert_close(gen.x0_from_eps(z, eps), expected, rtol=1e-5, atol=1e-5)


def test_identity_encoder_order_invariant_masks_and_null():
    torch.manual_seed(0)
    cfg = HonestFaceConfig.tiny()
    for pooling in ("attention", "mean"):
        cfg.identity.pooling = pooling
        enc = IdentityEncoder(cfg.identity, 1024).eval()
        emb = torch.randn(2, 5, 512)
        mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
        out = enc(emb, mask)
        assert out.shape == (2, 4, 1024)
        perm = enc(emb[:, [4, 2, 0, 3, 1]], mask[:, [4, 2, 0, 3, 1]])
        torch.testing.assert_close(perm[0], out[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(perm[1], out[1], rtol=1e-4, atol=1e-5)  # padding slots moved, same result
        emb2 = emb.clone()
        emb2[1, 2:] = torch.randn(3, 512)  # masked slots do not matter
        torch.testing.assert_close(enc(emb2, mask), out)
        blind = enc(emb, torch.zeros(2, 5, dtype=torch.bool))
        assert torch.equal(blind, enc.null_tokens.expand(2, -1, -1))


def test_feature_extractor_order_invariant_and_uses_lq():
    torch.manual_seed(0)
    cfg = HonestFaceConfig.tiny().features
    fx = FeatureExtractor(cfg, 1024).eval()
    lq = torch.randn(2, cfg.backbone_channels, 7, 7)
    refs = torch.randn(2, 3, cfg.backbone_channels, 7, 7)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = fx(lq, refs, mask)
    assert out.shape == (2, 16, 1024)
    torch.testing.assert_close(fx(lq, refs[:, [2, 0, 1]], mask[:, [2, 0, 1]]), out, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(fx(lq + 1, refs, mask), out)
    other = fx(torch.randn(2, cfg.backbone_channels, 14, 14), torch.randn(2, 3, cfg.backbone_channels, 14, 14), mask)
    assert other.shape == (2, 16, 1024)  # position embedding interpolated for other grids


def test_fusion_token_layout_and_zero_init_mixer():
    torch.manual_seed(0)
    cfg = HonestFaceConfig.tiny().fusion
    with_mixer = FeatureFusion(cfg, 64)
    cfg.mixer_layers = 0
    plain = FeatureFusion(cfg, 64)
    plain.load_state_dict({k: v for k, v in with_mixer.state_dict().items() if k in plain.state_dict()})
    parts = torch.randn(2, 77, 64), torch.randn(2, 4, 64), torch.randn(2, 16, 64)
    p = with_mixer(*parts)
    assert p.shape == (2, 97, 64)
    torch.testing.assert_close(p, plain(*parts))  # zero-initialised mixer output
    # every branch is LayerNorm-ed and tagged with its own embedding
    assert torch.allclose(p[:, :77].mean(-1), with_mixer.branch_embed[0].mean().expand(2, 77), atol=1e-5)
