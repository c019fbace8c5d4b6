"""2D toy distributions, usable as source or target.

Each sampler has the signature ``sample(n, generator=None, device=None) -> Tensor (n, 2)`` and draws
on ``device`` with ``generator`` (a ``torch.Generator`` on that device), so a DataModule can draw
sources on a rank's GPU with a per-rank generator.

``8gaussians`` and ``moons`` follow torchcfm (``torchcfm.utils.sample_8gaussians`` /
``sample_moons``) so results compare side by side with it:

- ``8gaussians``: 8 centres at radius 5 on the unit circle's axes and diagonals, covariance
  ``sqrt(0.1) * I`` (torchcfm passes ``sqrt(var)`` as the covariance, so the standard deviation is
  ``0.1 ** 0.25``), centres drawn uniformly.
- ``moons``: torchdyn's ``generate_moons(noise=0.2) * 3 - 1``: ``n // 2`` points evenly spaced on
  the outer arc ``(cos a, sin a)`` and the rest on the inner arc ``(1 - cos a, 0.5 - sin a)``,
  a in [0, pi], plus **one** uniform offset in [0, 0.2) added to both coordinates of each point
  (then shuffled). The even spacing is a stratified draw: two such samples of 2000 points are
  about 0.006 apart in W2^2, where i.i.d. angles and arms would put them 0.03-0.07 apart (the arm
  counts alone vary by about 22 points), which would swamp the figures the benchmarks compare.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["TOYS", "sample_toy"]

_DIAG = 1.0 / math.sqrt(2.0)
_EIGHT_CENTRES = [(1, 0), (-1, 0), (0, 1), (0, -1), (_DIAG, _DIAG), (_DIAG, -_DIAG), (-_DIAG, _DIAG), (-_DIAG, -_DIAG)]


def _rand(n: int, *shape: int, generator=None, device=None) -> Tensor:
    return torch.rand(n, *shape, generator=generator, device=device)


def _randn(n: int, *shape: int, generator=None, device=None) -> Tensor:
    return torch.randn(n, *shape, generator=generator, device=device)


def gaussian(n: int, generator=None, device=None) -> Tensor:
    """Standard normal N(0, I) in 2D."""
    return _randn(n, 2, generator=generator, device=device)


def eight_gaussians(n: int, generator=None, device=None) -> Tensor:
    """Mixture of 8 Gaussians at radius 5, std ``0.1 ** 0.25`` (torchcfm's ``sample_8gaussians``)."""
    centres = torch.tensor(_EIGHT_CENTRES, device=device) * 5.0
    k = torch.randint(0, 8, (n,), generator=generator, device=device)
    return centres[k] + _randn(n, 2, generator=generator, device=device) * 0.1**0.25


def moons(n: int, generator=None, device=None) -> Tensor:
    """Two moons exactly as torchcfm's ``sample_moons`` draws them (see module docstring), shuffled."""
    n_out = n // 2
    outer = torch.linspace(0.0, math.pi, n_out, device=device)
    inner = torch.linspace(0.0, math.pi, n - n_out, device=device)
    x = torch.cat([torch.cos(outer), 1.0 - torch.cos(inner)])
    y = torch.cat([torch.sin(outer), 0.5 - torch.sin(inner)])
    offset = _rand(n, 1, generator=generator, device=device) * 0.2
    points = (torch.stack([x, y], dim=1) + offset) * 3.0 - 1.0
    return points[torch.randperm(n, generator=generator, device=device)]


def checkerboard(n: int, generator=None, device=None) -> Tensor:
    """The 4x4 checkerboard on [-4, 4]^2 (FFJORD's ``checkerboard``)."""
    x1 = _rand(n, generator=generator, device=device) * 4.0 - 2.0
    x2 = _rand(n, generator=generator, device=device) - 2.0 * torch.randint(0, 2, (n,), generator=generator, device=device)
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1) * 2.0


def spiral(n: int, generator=None, device=None) -> Tensor:
    """Two interleaved spirals (FFJORD's ``2spirals``), radius up to about 3.2."""
    r = torch.sqrt(_rand(n, generator=generator, device=device)) * 540.0 * (2 * math.pi) / 360.0
    arm = torch.stack([-torch.cos(r) * r, torch.sin(r) * r], dim=1) + _rand(n, 2, generator=generator, device=device) * 0.5
    sign = torch.where(_rand(n, 1, generator=generator, device=device) < 0.5, -1.0, 1.0)
    return sign * arm / 3.0 + _randn(n, 2, generator=generator, device=device) * 0.1


TOYS: dict[str, Callable[..., Tensor]] = {
    "gaussian": gaussian,
    "8gaussians": eight_gaussians,
    "moons": moons,
    "checkerboard": checkerboard,
    "spiral": spiral,
}


def sample_toy(name: str, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Draw ``n`` points of the toy distribution ``name``.

    Args:
        name: one of :data:`TOYS`.
        n: number of points.
        generator: optional ``torch.Generator`` on ``device``.
        device: where to draw.

    Returns:
        Tensor of shape ``(n, 2)``, float32.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    try:
        sampler = TOYS[name]
    except KeyError:
        raise ValueError(f"unknown toy distribution {name!r}; choose one of {sorted(TOYS)}") from None
    if device is None and generator is not None:
        device = generator.device
    return sampler(int(n), generator=generator, device=device)
