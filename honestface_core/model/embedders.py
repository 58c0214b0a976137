"""Reference embedders: Face Identity Encoder (-> p_F) and Facial Feature Extractor (-> p_I).

The HonestFace paper names these two branches but its method text is not public, so everything in this module is
**our choice** (docs/design.md §2):

- :class:`IdentityEncoder`: L2-normalised ArcFace embeddings of K >= 1 references, pooled order-invariantly
  (attention pooling with one learned query, or the mean), then an MLP to N_F tokens of the prompt width.
- :class:`FeatureExtractor`: spatial feature maps of the LQ input and of every reference from the frozen face
  backbone (:class:`honestface_core.model.iresnet.FaceBackbone`), each token tagged with a learned source embedding
  (LQ vs reference) and a learned 2-D position embedding, read out by a Perceiver-style resampler to N_I tokens.

Both take a boolean mask over references so every sample in a batch may have its own K. A sample with no
reference gets the branch's learned null tokens (blind mode). Neither uses the order of references: attention
over a set with no per-reference position is permutation-invariant.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from honestface_core.model.config import FeatureExtractorConfig, IdentityEncoderConfig


class FaceBackboneLike(Protocol):
    """What the embedders need from the frozen face backbone (implemented by ``iresnet.FaceBackbone``).

    Both methods take FFHQ-aligned ``(B, 3, S, S)`` crops in [-1, 1].
    """

    feature_channels: int
    feature_size: int

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w)
        ...

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # (B, D), L2-normalised
        ...


class Attention(nn.Module):
    """Multi-head attention with a boolean key mask (True = attend)."""

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(kv_dim or dim, dim)
        self.to_v = nn.Linear(kv_dim or dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = q.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(b, x.shape[1], self.heads, -1).transpose(1, 2)

        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(split(self.to_q(q)), split(self.to_k(kv)), split(self.to_v(kv)), attn_mask=attn_mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))


def _with_null(tokens: torch.Tensor, null: torch.Tensor, has_any: torch.Tensor) -> torch.Tensor:
    """Replace the rows of samples without references by the learned null tokens."""
    return torch.where(has_any[:, None, None], tokens, null.to(tokens.dtype).expand_as(tokens))


def _safe_mask(mask: torch.Tensor) -> torch.Tensor:
    """Let all-masked rows attend to their first slot (their output is replaced by null tokens afterwards)."""
    fixed = mask.clone()
    fixed[~mask.any(dim=1), 0] = True
    return fixed


class IdentityEncoder(nn.Module):
    """ArcFace embeddings (B, K, D) + mask (B, K) -> p_F (B, N_F, prompt_dim)."""

    def __init__(self, cfg: IdentityEncoderConfig, prompt_dim: int):
        super().__init__()
        self.config = cfg
        d = cfg.embedding_dim
        if cfg.pooling == "attention":
            self.query = nn.Parameter(torch.randn(1, 1, d) * 0.02)
            self.norm = nn.LayerNorm(d)
            self.pool = Attention(d, cfg.pooling_heads)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.hidden_dim), nn.GELU(), nn.Linear(cfg.hidden_dim, cfg.num_tokens * prompt_dim))
        self.null_tokens = nn.Parameter(torch.randn(1, cfg.num_tokens, prompt_dim) * 0.02)

    def forward(self, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, _, d = embeddings.shape
        emb = F.normalize(embeddings, dim=-1)
        has_any = mask.any(dim=1)
        if self.config.pooling == "attention":
            pooled = self.pool(self.query.expand(b, 1, d).to(emb.dtype), self.norm(emb), _safe_mask(mask))[:, 0]
            pooled = pooled + _masked_mean(emb, mask)  # residual to the mean identity (our choice)
        else:
            pooled = _masked_mean(emb, mask)
        tokens = self.mlp(pooled).reshape(b, self.config.num_tokens, -1)
        return _with_null(tokens, self.null_tokens, has_any)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp(min=1)


class PerceiverBlock(nn.Module):
    """Latents attend to [inputs; latents] (Flamingo/IP-Adapter style), then a feed-forward layer."""

    def __init__(self, dim: int, heads: int, ff_mult: int):
        super().__init__()
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ff = _feed_forward(dim, ff_mult)

    def forward(self, latents: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lat = self.norm_latents(latents)
        kv = torch.cat([self.norm_x(x), lat], dim=1)
        full_mask = torch.cat([mask, mask.new_ones(mask.shape[0], lat.shape[1])], dim=1)
        latents = latents + self.attn(lat, kv, full_mask)
        return latents + self.ff(latents)


class FeatureExtractor(nn.Module):
    """Backbone feature maps of the LQ face and the references -> p_I (B, N_I, prompt_dim)."""

    LQ, REFERENCE = 0, 1

    def __init__(self, cfg: FeatureExtractorConfig, prompt_dim: int):
        super().__init__()
        self.config = cfg
        self.proj_in = nn.Linear(cfg.backbone_channels, cfg.dim)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.dim, cfg.feature_grid, cfg.feature_grid) * 0.02)
        self.source_embed = nn.Embedding(2, cfg.dim)
        self.latents = nn.Parameter(torch.randn(1, cfg.num_tokens, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(PerceiverBlock(cfg.dim, cfg.heads, cfg.ff_mult) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.dim)
        self.proj_out = nn.Linear(cfg.dim, prompt_dim)
        self.null_tokens = nn.Parameter(torch.randn(1, cfg.num_tokens, prompt_dim) * 0.02)

    def _tokens(self, feats: torch.Tensor, source: int) -> torch.Tensor:
        """(N, C, h, w) -> (N, h*w, dim) with position and source embeddings."""
        pos = self.pos_embed
        if pos.shape[-2:] != feats.shape[-2:]:
            pos = F.interpolate(pos, size=feats.shape[-2:], mode="bilinear", align_corners=False)
        x = self.proj_in(feats.flatten(2).transpose(1, 2))
        return x + pos.flatten(2).transpose(1, 2).to(x.dtype) + self.source_embed.weight[source].to(x.dtype)

    def forward(self, lq_features: torch.Tensor, ref_features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: lq_features (B, C, h, w); ref_features (B, K, C, h, w); mask (B, K) bool."""
        b, k = mask.shape
        lq = self._tokens(lq_features, self.LQ)
        refs = self._tokens(ref_features.flatten(0, 1), self.REFERENCE)
        hw = refs.shape[1]
        refs = refs.reshape(b, k * hw, -1)
        tokens = torch.cat([lq, refs], dim=1)
        token_mask = torch.cat([mask.new_ones(b, lq.shape[1]), mask.repeat_interleave(hw, dim=1)], dim=1)
        latents = self.latents.expand(b, -1, -1).to(tokens.dtype)
        for block in self.blocks:
            latents = block(latents, tokens, token_mask)
        out = self.proj_out(self.norm_out(latents))
        return _with_null(out, self.null_tokens, mask.any(dim=1))
