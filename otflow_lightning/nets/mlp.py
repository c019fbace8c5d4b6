"""MLP with sinusoidal time embeddings, for vector data (the 2D toys)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["TimeMLP", "SinusoidalEmbedding"]


class SinusoidalEmbedding(nn.Module):
    """Map times ``(n,)`` in [0, 1] to ``(n, 2 * frequencies + 1)`` features ``[t, sin(2 pi f t), cos(2 pi f t)]``.

    Frequencies are spaced geometrically from 1 to ``max_frequency`` (cycles per unit time). Keep
    them low for MeanFlow: its target contains ``du/dt``, and high time frequencies make that
    derivative, and so the target, noisy (max 64 gave W2^2 0.68 on the toy where max 1 gave 0.17).
    Forward-mode AD safe.
    """

    def __init__(self, frequencies: int = 4, max_frequency: float = 2.0) -> None:
        super().__init__()
        freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), frequencies)) * 2 * math.pi
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = 2 * frequencies + 1

    def forward(self, t: Tensor) -> Tensor:
        angles = t[:, None] * self.freqs
        return torch.cat([t[:, None], torch.sin(angles), torch.cos(angles)], dim=1)


def num_times_error(net: str, built: int, called: int) -> ValueError:
    """The error for a net built with ``num_times=built`` but called with ``called`` times: it names
    what each module calls its net with and the fix."""
    return ValueError(
        f"{net} was built for num_times={built} time arguments but was called with {called}: OT-MF nets take 2 "
        f"(t, h), OT-NFM flow maps 1; build it with num_times={called}"
    )


class TimeMLP(nn.Module):
    """``net(x, *times, labels=None) -> (n, dim)``: an MLP on ``[x, emb(t_1), ..., emb(t_k), emb(label)]``.

    OT-MF calls it with two times (start ``t`` and interval ``h = t_end - t``), OT-NFM flow maps
    with one. Every time gets its own sinusoidal embedding.

    Args:
        dim: data dimension (input and output).
        hidden: hidden width.
        depth: number of hidden layers.
        num_times: how many time arguments ``forward`` takes.
        frequencies: sinusoidal frequencies per time.
        num_classes: number of labels for class conditioning (``None``: unconditional); label
            ``num_classes`` is the null class (label dropout, guidance), as in the U-Net.
        label_dim: width of the learned label embedding.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 3,
        num_times: int = 2,
        frequencies: int = 4,
        num_classes: int | None = None,
        label_dim: int = 16,
    ) -> None:
        super().__init__()
        self.dim, self.num_times, self.num_classes = dim, num_times, num_classes
        self.embeddings = nn.ModuleList(SinusoidalEmbedding(frequencies) for _ in range(num_times))
        self.label_embedding = nn.Embedding(num_classes + 1, label_dim) if num_classes else None
        width = dim + sum(e.dim for e in self.embeddings) + (label_dim if num_classes else 0)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor, *times: Tensor, labels: Tensor | None = None) -> Tensor:
        """Args: ``x`` ``(n, dim)``; each time ``(n,)`` (or a scalar, broadcast); ``labels`` ``(n,)``
        long (``num_classes`` = null) or ``None`` (null for a conditional net). Returns ``(n, dim)``."""
        if len(times) != self.num_times:
            raise num_times_error("TimeMLP", self.num_times, len(times))
        feats = [x] + [emb(torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])) for emb, t in zip(self.embeddings, times)]
        if self.label_embedding is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            feats.append(self.label_embedding(labels))
        elif labels is not None:
            raise ValueError("labels were given but the TimeMLP is unconditional; build it with num_classes")
        return self.layers(torch.cat(feats, dim=1))
