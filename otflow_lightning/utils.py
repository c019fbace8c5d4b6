"""Small shared helpers."""

from __future__ import annotations

import torch

__all__ = ["rank_generator"]

_STREAMS = {"source": 0, "val": 1, "time": 2, "sample": 3}


def rank_generator(device: torch.device | str, seed: int, rank: int, step: int = 0, stream: str = "source") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``(seed, rank, step, stream)``.

    ``seed_everything`` gives every DDP rank the same global seed, so noise and times drawn from the
    global RNG are identical across ranks. Draw them from this generator instead: distinct per rank
    and per stream, reproducible, and (keyed by the step) fresh after a resume.
    """
    mixed = (seed * 1_000_003 + rank * 7_919 + step * 104_729 + _STREAMS[stream] * 15_485_863) % (2**63)
    return torch.Generator(device=device).manual_seed(mixed)
