"""Visual representation embedder (VRE, from OSDFace): LQ image -> 77 codebook tokens -> p_L (B, 77, 1024).

The encoder is a VQGAN-style encoder (base width 64, channel multipliers (1,2,2,2,4,8), 2 res-blocks per level,
attention at 16x16, 1x1 quant conv to 512x16x16 for a 512 input). Its module names follow OSDFace's ``vqvae_LQ``
checkpoint (``encoder.down.0.block.0.norm1.weight`` ...), so that checkpoint loads key for key. The frozen LQ
codebook (1024 x 512) is read out per sample: nearest code and distance for each of the 256 positions, positions
sorted by distance (closest first), distinct codes collected until 77 are found (zero rows if fewer exist).
Unlike OSDFace's loop (correct only for batch size 1) the selection is vectorised over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from honestface_core.model.config import VREConfig
from honestface_core.model.memory_format import cpu_channels_last, cpu_chunks


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block (VQGAN); 1x1 ``nin_shortcut`` when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Multi-head spatial self-attention with 1x1 conv projections (``norm2`` is kept for checkpoint compatibility)."""

    def __init__(self, channels: int, groups: int, head_size: int = 1):
        super().__init__()
        self.heads = head_size
        self.norm1 = _norm(channels, groups)
        self.norm2 = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm1(x)
        q, k, v = (m(n).reshape(b, self.heads, c // self.heads, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv with VQGAN's asymmetric (0, 1, 0, 1) padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class VQEncoder(nn.Module):
    """VQGAN encoder: ``conv_in``, ``down[i].block/attn/downsample``, ``mid``, ``norm_out``, ``conv_out``."""

    def __init__(self, cfg: VREConfig):
        super().__init__()
        g, ch = cfg.norm_groups, cfg.base_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        in_mult = (1,) + tuple(cfg.channel_mult)
        res = cfg.resolution
        block_in = ch
        for level, mult in enumerate(cfg.channel_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_mult[level]
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(block_in, ch * mult, g))
                block_in = ch * mult
                if res in cfg.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in, g, cfg.head_size))
            if level != len(cfg.channel_mult) - 1:
                stage.downsample = Downsample(block_in)
                res //= 2
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, g)
        self.mid.attn_1 = AttnBlock(block_in, g, cfg.head_size)
        self.mid.block_2 = ResnetBlock(block_in, block_in, g)
        self.norm_out = _norm(block_in, g)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


def select_codebook_tokens(z: torch.Tensor, codebook: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick ``num_tokens`` distinct nearest codes per sample, ordered by distance (vectorised over the batch).

    For each spatial position the nearest code and its squared distance are found; positions are sorted by that
    distance (stable, closest first) and each code keeps the rank of its first (closest) position. Codes sorted by
    that rank give the distinct codes in order of distance.

    Args:
        z: (B, C, H, W) quantiser input.
        codebook: (N, C) code vectors.
        num_tokens: T, number of tokens to return.

    Returns:
        tokens (B, T, C) in ``codebook.dtype`` (zero rows where fewer than T distinct codes exist) and
        indices (B, T) int64 (-1 for those rows). Distances are computed in float32 (our choice: selection does
        not change with the model's dtype).
    """
    b, c, h, w = z.shape
    positions = h * w
    flat = z.flatten(2).transpose(1, 2).float()  # (B, P, C)
    book = codebook.float()
    dist = flat.pow(2).sum(-1, keepdim=True) + book.pow(2).sum(-1) - 2.0 * flat @ book.t()  # (B, P, N)
    best_dist, best_idx = dist.min(dim=-1)  # (B, P)
    order = best_dist.argsort(dim=1, stable=True)
    sorted_idx = best_idx.gather(1, order)  # codes in order of position distance
    ranks = torch.arange(positions, device=z.device).expand(b, positions)
    first_rank = torch.full((b, book.shape[0]), positions, device=z.device, dtype=torch.long)
    first_rank.scatter_reduce_(1, sorted_idx, ranks, reduce="amin", include_self=True)
    code_rank, code_order = first_rank.sort(dim=1, stable=True)
    take = min(num_tokens, book.shape[0])
    indices = torch.where(code_rank[:, :take] < positions, code_order[:, :take], -1)
    if take < num_tokens:
        indices = F.pad(indices, (0, num_tokens - take), value=-1)
    valid = indices >= 0
    tokens = codebook[indices.clamp(min=0)] * valid.unsqueeze(-1).to(codebook.dtype)
    return tokens, indices


class VisualRepresentationEmbedder(nn.Module):
    """Frozen VRE encoder + quant conv + frozen LQ codebook: image -> (B, 77, codebook_dim) code tokens."""

    def __init__(self, cfg: VREConfig):
        super().__init__()
        self.config = cfg
        self.encoder = VQEncoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_dim, 1)
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.codebook_dim)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> quantiser input (B, codebook_dim, 16, 16); resized to the VRE resolution.
        Channels-last and in memory-sized chunks on CPU (see :mod:`.memory_format`)."""
        size = self.config.resolution
        if image.shape[-2:] != (size, size):
            image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
        return cpu_chunks(lambda x: self.quant_conv(self.encoder(cpu_channels_last(x))).contiguous(), image, size * size)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the selected code tokens (B, T, codebook_dim) and their codebook indices (B, T)."""
        return select_codebook_tokens(self.encode(image), self.codebook.weight, self.config.num_tokens)


class TokenProjector(nn.Module):
    """OSDFace's trainable projector: 1x1 conv 512->256, SiLU, 256->1024, SiLU (keys ``conv1``, ``conv2``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv1d(in_dim, hidden_dim, 1)
        self.conv2 = nn.Conv1d(hidden_dim, out_dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, in_dim) -> (B, T, out_dim)."""
        x = F.silu(self.conv1(tokens.transpose(1, 2)))
        return F.silu(self.conv2(x)).transpose(1, 2)
