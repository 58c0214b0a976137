"""Feature Fusion: p_L, p_F, p_I -> prompt p (B, 77 + N_F + N_I, 1024).

All of it is **our choice** (docs/model.md): a LayerNorm per branch, a learned branch-type embedding added to every
token of its branch, concatenation along the token axis and an optional small transformer mixer whose output
projection starts at zero (so a fresh mixer leaves the concatenation unchanged).

Two switches serve the warm start from OSDFace (docs/training.md): ``lq_tokens="raw"`` lets p_L through without
LayerNorm and type embedding, and a token mask (``keep``) leaves the identity tokens of faces without references
out of the mixer's attention; with only p_L given the prompt is p_L alone.
"""

from __future__ import annotations

import torch
from torch import nn

from honestface_core.model.config import FusionConfig

BRANCHES = ("lq", "identity", "features")


class FeatureFusion(nn.Module):
    """Fuse the three prompt branches into one token sequence for the UNet's cross-attention."""

    def __init__(self, cfg: FusionConfig, prompt_dim: int):
        super().__init__()
        self.raw_lq = cfg.lq_tokens == "raw"
        self.norms = nn.ModuleList(nn.Identity() if i == 0 and self.raw_lq else nn.LayerNorm(prompt_dim)
                                   for i in range(len(BRANCHES)))
        self.branch_embed = nn.Parameter(torch.randn(len(BRANCHES), prompt_dim) * 0.02)
        self.mixer = None
        if cfg.mixer_layers > 0:
            layer = nn.TransformerEncoderLayer(
                prompt_dim, cfg.mixer_heads, prompt_dim * cfg.mixer_ff_mult, dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True,
            )
            self.mixer = nn.TransformerEncoder(layer, cfg.mixer_layers, enable_nested_tensor=False)
            self.mixer_out = nn.Linear(prompt_dim, prompt_dim)
            nn.init.zeros_(self.mixer_out.weight)
            nn.init.zeros_(self.mixer_out.bias)

    def _branch(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        if index == 0 and self.raw_lq:
            return tokens
        return self.norms[index](tokens) + self.branch_embed[index].to(tokens.dtype)

    def forward(self, p_lq: torch.Tensor, p_identity: torch.Tensor | None = None,
                p_features: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt tokens from the branches; ``p_identity=None`` = p_L only.

        Args:
            keep: optional (B, T) bool over the output tokens, False = left out of the mixer's attention.
        """
        branches = [p_lq] if p_identity is None else [p_lq, p_identity, p_features]
        parts = [self._branch(i, tokens) for i, tokens in enumerate(branches)]
        p = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # raw p_L alone: the projector's own tensor
        if self.mixer is not None:
            p = p + self.mixer_out(self.mixer(p, src_key_padding_mask=None if keep is None else ~keep))
        return p
