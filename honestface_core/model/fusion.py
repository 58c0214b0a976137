"""Feature Fusion: p_L, p_F, p_I -> prompt p (B, 77 + N_F + N_I, 1024).

All of it is **our choice** (SPEC §1): a LayerNorm per branch, a learned branch-type embedding added to every
token of its branch, concatenation along the token axis and an optional small transformer mixer whose output
projection starts at zero (so a fresh mixer leaves the concatenation unchanged).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import FusionConfig

BRANCHES = ("lq", "identity", "features")


class FeatureFusion(nn.Module):
    """Fuse the three prompt branches into one token sequence for the UNet's cross-attention."""

    def __init__(self, cfg: FusionConfig, prompt_dim: int):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(prompt_dim) for _ in BRANCHES)
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

    def forward(self, p_lq: torch.Tensor, p_identity: torch.Tensor, p_features: torch.Tensor) -> torch.Tensor:
        parts = [norm(p) + emb.to(p.dtype) for norm, p, emb in zip(self.norms, (p_lq, p_identity, p_features), self.branch_embed)]
        p = torch.cat(parts, dim=1)
        if self.mixer is not None:
            p = p + self.mixer_out(self.mixer(p))
        return p
