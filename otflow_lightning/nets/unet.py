"""A U-Net for images that ``torch.func.jvp`` can differentiate (OT-MF's forward-mode AD).

DDPM++/EDM-style (``SongUNet``): residual blocks with GroupNorm, SiLU, adaptive scale/shift from the
time (and label) embedding, skip scaling by ``1/sqrt(2)``, self-attention at chosen levels, zero
initialised output convolutions. Everything is plain PyTorch ops with forward-mode AD rules:
GroupNorm (never BatchNorm, whose running-stat update breaks ``jvp``), attention written with
``einsum`` and ``softmax`` (flash and memory-efficient SDPA kernels have no forward AD), no custom
``autograd.Function``.

Called as ``net(x, *times, labels=None)``: ``num_times`` times (2 for OT-MF: ``t`` and ``h = e - t``;
1 for an OT-NFM flow map), each ``(n,)`` or a scalar, every time with its own sinusoidal embedding
(low frequencies: OT-MF's target contains ``du/dt``, which high-frequency time features make noisy).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mlp import SinusoidalEmbedding, num_times_error

__all__ = ["UNet", "UNET_PRESETS"]

#: Size presets: ``tiny`` for tests and 8x8 digits, ``mnist`` (28x28 or 32x32), ``cifar`` (EDM's
#: DDPM++ CIFAR-10 layout: 128 channels, multipliers 2-2-2, 4 blocks a level, attention at 16x16).
UNET_PRESETS: dict[str, dict] = {
    "tiny": dict(channels=16, channel_mult=(1, 2), num_blocks=1, attn_levels=(1,), dropout=0.0),
    "mnist": dict(channels=64, channel_mult=(1, 2, 2), num_blocks=2, attn_levels=(2,), dropout=0.1),
    "cifar": dict(channels=128, channel_mult=(2, 2, 2), num_blocks=4, attn_levels=(1,), dropout=0.2),
}


def _divisor_at_most(channels: int, limit: int) -> int:
    """The largest divisor of ``channels`` that is at most ``limit`` (at least 1)."""
    return max(g for g in range(1, max(1, limit) + 1) if channels % g == 0)


def _groups(channels: int) -> int:
    """GroupNorm groups: 32 where the width allows (EDM), fewer for narrow layers; always divides the width."""
    return math.gcd(32, channels) if channels >= 32 else _divisor_at_most(channels, channels // 4)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with ``(1 + scale) * h + shift`` from the embedding in between."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm2(h) * (1 + scale) + shift)
        h = self.conv2(self.dropout(h))
        return (self.skip(x) + h) / math.sqrt(2)


class Attention(nn.Module):
    """Multi-head self-attention over pixels, as ``einsum`` + ``softmax`` (forward-AD safe)."""

    def __init__(self, channels: int, head_dim: int = 64) -> None:
        super().__init__()
        self.heads = _divisor_at_most(channels, channels // head_dim)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        n, c, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, hgt * wid).unbind(1)
        weights = torch.einsum("nhdi,nhdj->nhij", q, k / math.sqrt(c // self.heads)).softmax(dim=-1)
        out = torch.einsum("nhij,nhdj->nhdi", weights, v).reshape(n, c, hgt, wid)
        return (x + self.proj(out)) / math.sqrt(2)


class Level(nn.Module):
    """One resolution level: ``ResBlock`` then, where ``attn``, ``Attention``."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, attn: bool) -> None:
        super().__init__()
        self.block = ResBlock(cin, cout, emb_dim, dropout)
        self.attn = Attention(cout) if attn else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.block(x, emb))


class UNet(nn.Module):
    """``net(x, *times, labels=None) -> (n, C, H, W)``: a time-conditioned U-Net for images.

    Args:
        in_channels: image channels ``C`` (input and output).
        preset: ``tiny``, ``mnist`` or ``cifar`` (see :data:`UNET_PRESETS`); the explicit
            arguments below override it.
        channels: base width.
        channel_mult: width multiplier of each level; the image is halved between levels, so
            ``H`` and ``W`` must be divisible by ``2 ** (len(channel_mult) - 1)``.
        num_blocks: residual blocks per level on the way down (one more on the way up).
        attn_levels: indices of the levels with self-attention (``1`` = half resolution).
        dropout: dropout in the residual blocks (OT-MF: one JVP pass draws one mask; with
            ``jvp_no_grad=True`` both passes start from the same RNG state).
        num_times: number of time arguments (2 for OT-MF, 1 for OT-NFM).
        num_classes: number of labels for class conditioning (``None``: unconditional). Label
            ``num_classes`` is the null class (used for label dropout and guidance).
        frequencies: sinusoidal frequencies per time embedding.
        max_frequency: highest time frequency, in cycles per unit time (keep it low for OT-MF).
        compile: compile the network in place (``nn.Module.compile``). ``torch.func.jvp`` does not
            trace into compiled code on torch 2.14 (dynamo skips frames under forward-mode AD), so
            JVP passes run eagerly: OT-MF gains in the gradient pass of ``jvp_no_grad=True``,
            OT-NFM (no JVP) in every pass. Parameter names are unchanged (checkpoints portable).
    """

    def __init__(
        self,
        in_channels: int = 3,
        preset: str | None = "tiny",
        channels: int | None = None,
        channel_mult: Sequence[int] | None = None,
        num_blocks: int | None = None,
        attn_levels: Sequence[int] | None = None,
        dropout: float | None = None,
        num_times: int = 2,
        num_classes: int | None = None,
        frequencies: int = 16,
        max_frequency: float = 4.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if preset is not None and preset not in UNET_PRESETS:
            raise ValueError(f"unknown UNet preset {preset!r}; choose one of {sorted(UNET_PRESETS)} or None")
        given = dict(channels=channels, channel_mult=channel_mult, num_blocks=num_blocks, attn_levels=attn_levels, dropout=dropout)
        cfg = {"dropout": 0.0, **UNET_PRESETS.get(preset or "", {}), **{k: v for k, v in given.items() if v is not None}}
        missing = [k for k in given if k not in cfg]
        if missing:
            raise ValueError(f"UNet needs {missing} when preset=None")
        ch, mult, attn = cfg["channels"], tuple(cfg["channel_mult"]), set(cfg["attn_levels"])
        if any(lvl >= len(mult) for lvl in attn):
            raise ValueError(f"attn_levels {sorted(attn)} must index channel_mult of length {len(mult)}")
        self.in_channels, self.num_times, self.num_classes = in_channels, num_times, num_classes
        self.levels = len(mult)
        emb_dim = 4 * ch

        # conditioning: one embedding per time, summed, plus a label embedding (last index = null)
        self.time_embeddings = nn.ModuleList(SinusoidalEmbedding(frequencies, max_frequency) for _ in range(num_times))
        self.time_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(e.dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)) for e in self.time_embeddings
        )
        self.label_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

        # encoder: blocks per level, a strided conv between levels; remember every output as a skip
        self.stem = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down, skips, width = nn.ModuleList(), [ch], ch
        for i, m in enumerate(mult):
            for _ in range(cfg["num_blocks"]):
                self.down.append(Level(width, ch * m, emb_dim, cfg["dropout"], i in attn))
                width = ch * m
                skips.append(width)
            if i < len(mult) - 1:
                self.down.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
                skips.append(width)
        self.middle = nn.ModuleList([Level(width, width, emb_dim, cfg["dropout"], True), Level(width, width, emb_dim, cfg["dropout"], False)])
        # decoder: num_blocks + 1 blocks per level, each eating one skip; upsample between levels
        self.up = nn.ModuleList()
        for i, m in reversed(list(enumerate(mult))):
            for _ in range(cfg["num_blocks"] + 1):
                self.up.append(Level(width + skips.pop(), ch * m, emb_dim, cfg["dropout"], i in attn))
                width = ch * m
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1)))
        self.head = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.SiLU(), _zero(nn.Conv2d(width, in_channels, 3, padding=1)))
        if compile:
            self.compile()

    def embed(self, n: int, times: Sequence[Tensor | float], labels: Tensor | None, like: Tensor) -> Tensor:
        """Conditioning vector ``(n, 4 * channels)`` from the times and optional labels."""
        if len(times) != self.num_times:
            raise num_times_error("UNet", self.num_times, len(times))
        emb = 0
        for sin, mlp, t in zip(self.time_embeddings, self.time_mlps, times):
            emb = emb + mlp(sin(torch.as_tensor(t, dtype=like.dtype, device=like.device).expand(n)))
        if self.label_embedding is not None:
            if labels is None:
                labels = torch.full((n,), self.num_classes, dtype=torch.long, device=like.device)
            emb = emb + self.label_embedding(labels)
        elif labels is not None:
            raise ValueError("labels were given but the UNet is unconditional; build it with num_classes")
        return F.silu(emb)

    def forward(self, x: Tensor, *times: Tensor | float, labels: Tensor | None = None) -> Tensor:
        """Args: ``x`` ``(n, C, H, W)``; each time ``(n,)`` or a scalar; ``labels`` ``(n,)`` long
        (``num_classes`` = null) or ``None``. Returns ``(n, C, H, W)``."""
        factor = 2 ** (self.levels - 1)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects (n, {self.in_channels}, H, W) images (in_channels={self.in_channels}), got {tuple(x.shape)}"
            )
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(
                f"UNet expects H, W divisible by {factor} ({self.levels} levels), got {tuple(x.shape)}; "
                "pad the images or use fewer levels (channel_mult)"
            )
        emb = self.embed(x.shape[0], times, labels, x)
        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, Level) else layer(h)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for layer in self.up:
            h = layer(torch.cat([h, skips.pop()], dim=1), emb) if isinstance(layer, Level) else layer(h)
        return self.head(h)
