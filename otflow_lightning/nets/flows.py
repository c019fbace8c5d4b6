r"""Neural-flow maps ``F(x, t)``: the solution map of an ODE, learned directly (Bilos et al. 2021).

Every map here is called ``F(x, t)`` with ``x`` ``(n, *shape)`` and ``t`` ``(n,)`` (or a scalar) and
returns ``(n, *shape)``, with :math:`F(x, 0) = x` **by construction** (so it only has to learn how
the point moves). Maps that are invertible for every ``t`` expose ``inverse(y, t)``.

- :class:`ResidualFlowMap`: :math:`F(x, t) = x + t\, g(x, t)` around any network ``g(x, t)`` (an MLP
  for vectors, a U-Net for images). No invertibility; the most expressive one-step map.
- :class:`ResNetFlow`: stacked blocks :math:`x + \varphi(t) \odot g(x, t)` with
  :math:`|\varphi(t)| < 1` and :math:`\mathrm{Lip}_x(g) \le c < 1`, so each block's residual is a
  contraction and the block is inverted by fixed-point iteration (i-ResNet condition).
- :class:`AffineCouplingFlow`: stacked time-dependent affine couplings, inverted in closed form.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .mlp import SinusoidalEmbedding

__all__ = ["ResidualFlowMap", "ResNetFlow", "AffineCouplingFlow", "LipschitzLinear", "LipSwish"]


def _times(t: Tensor | float, x: Tensor) -> Tensor:
    """Times as ``(n,)`` in ``x``'s dtype and device (a scalar is broadcast)."""
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])


def _column(t: Tensor, x: Tensor) -> Tensor:
    """``(n,)`` times shaped to broadcast against ``x`` ``(n, ...)``."""
    return t.reshape((-1,) + (1,) * (x.ndim - 1))


class ResidualFlowMap(nn.Module):
    r""":math:`F(x, t) = x + t\, g(x, t)` around any network ``g`` called ``g(x, t) -> x``-shaped.

    With the linear interpolant :math:`x_t = (1 - t) x_0 + t x_1` the regression target of ``g`` is
    :math:`x_1 - x_0` at every ``t``, so the factor ``t`` costs nothing in expressivity. Wrap a
    :class:`~otflow_lightning.nets.TimeMLP` (``num_times=1``) for vectors or an image U-Net for
    images: the map does not care what ``g`` is. It is not constrained to be invertible.

    Args:
        net: ``g``, called ``net(x, t)`` with ``x`` ``(n, *shape)`` and ``t`` ``(n,)``; for class
            conditioning ``net(x, t, labels=labels)`` (a net built with ``num_classes``).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Tensor:
        t = _times(t, x)
        g = self.net(x, t) if labels is None else self.net(x, t, labels=labels)
        return x + _column(t, x) * g


class LipSwish(nn.Module):
    """``x * sigmoid(x) / 1.1``: a smooth 1-Lipschitz activation (Chen et al. 2019, i-ResNet work)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x) / 1.1


class LipschitzLinear(nn.Linear):
    r"""Linear layer whose Lipschitz constant in its first ``lipschitz_features`` inputs is at most ``bound``.

    The weight used is :math:`W \min(1, \text{bound} / \sigma)`, where :math:`\sigma` is the exact
    largest singular value of :math:`W_{:, :k}` (the columns of those inputs), computed at every
    call from the raw weight. Power iteration (``torch.nn.utils.spectral_norm``) underestimates
    :math:`\sigma`, runs no iteration in eval mode and keeps its estimate in buffers that weight
    averaging (EMA) would average; the exact value has no buffers, so the bound holds for whatever
    weights are loaded, averaged ones included. Cost: one SVD of an ``out x k`` matrix per call,
    cheap at the small widths these flows use.

    Args:
        in_features, out_features: as ``nn.Linear``.
        bound: Lipschitz bound in the constrained inputs.
        lipschitz_features: how many leading inputs are constrained (default all; the remaining
            ones, e.g. time features, are free).
    """

    def __init__(self, in_features: int, out_features: int, bound: float = 1.0, lipschitz_features: int | None = None) -> None:
        super().__init__(in_features, out_features)
        self.bound = float(bound)
        self.lipschitz_features = in_features if lipschitz_features is None else lipschitz_features

    def sigma(self) -> Tensor:
        """Exact spectral norm of the constrained columns of the raw weight."""
        return torch.linalg.matrix_norm(self.weight[:, : self.lipschitz_features], ord=2)

    def normalized_weight(self) -> Tensor:
        return self.weight * torch.clamp(self.bound / self.sigma(), max=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)


class _ResNetBlock(nn.Module):
    r"""One block :math:`x + \tanh(a t) \odot g([x, \mathrm{emb}(t)])` with :math:`\mathrm{Lip}_x(g) \le c`."""

    def __init__(self, dim: int, hidden: int, depth: int, lipschitz: float, frequencies: int, max_iter: int, tol: float) -> None:
        super().__init__()
        self.max_iter, self.tol = max_iter, tol
        self.embedding = SinusoidalEmbedding(frequencies)
        per_layer = lipschitz ** (1.0 / (depth + 1))
        layers: list[nn.Module] = [LipschitzLinear(dim + self.embedding.dim, hidden, per_layer, lipschitz_features=dim), LipSwish()]
        for _ in range(depth - 1):
            layers += [LipschitzLinear(hidden, hidden, per_layer), LipSwish()]
        layers.append(LipschitzLinear(hidden, dim, per_layer))
        self.g = nn.Sequential(*layers)
        self.a = nn.Parameter(torch.full((dim,), 1.0))

    def residual(self, x: Tensor, t: Tensor) -> Tensor:
        phi = torch.tanh(self.a * t[:, None])  # phi(0) = 0, |phi| < 1
        return phi * self.g(torch.cat([x, self.embedding(t)], dim=1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return x + self.residual(x, t)

    def inverse(self, y: Tensor, t: Tensor) -> Tensor:
        x = y
        for _ in range(self.max_iter):
            x_next = y - self.residual(x, t)
            done = (x_next - x).abs().max() <= self.tol * (1.0 + y.abs().max())
            x = x_next
            if done:
                break
        return x


class _StackedFlow(nn.Module):
    """A composition of layers ``layer(x, t)`` with ``layer.inverse(y, t)``; each is the identity at t = 0."""

    layers: nn.ModuleList

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        t = _times(t, x)
        for layer in self.layers:
            x = layer(x, t)
        return x

    @torch.no_grad()
    def inverse(self, y: Tensor, t: Tensor | float = 1.0) -> Tensor:
        """``x`` with ``F(x, t) = y``: the layers undone in reverse order."""
        t = _times(t, y)
        for layer in reversed(self.layers):
            y = layer.inverse(y, t)
        return y


class ResNetFlow(_StackedFlow):
    r"""Invertible ResNet flow: ``blocks`` stacked :math:`x \mapsto x + \tanh(a t) \odot g(x, t)`.

    Each block's residual is Lipschitz in ``x`` with constant below ``lipschitz < 1``:
    :math:`|\tanh(a t)| < 1` elementwise and every layer of ``g`` is a :class:`LipschitzLinear`
    (exact spectral norm, bound ``lipschitz ** (1 / layers)``) followed by the 1-Lipschitz
    :class:`LipSwish`, so the product of the bounds is ``lipschitz``. The block is then a bijection
    for every ``t`` in [0, 1] and its inverse is the fixed point of
    :math:`x = y - \tanh(a t) \odot g(x, t)` (a contraction: geometric convergence at rate ``lipschitz``).
    The price: each block moves a point by a bounded, smooth amount, so large transports need many
    blocks.

    Args:
        dim: data dimension (vectors ``(n, dim)``).
        hidden: width of ``g``.
        depth: hidden layers of ``g``.
        blocks: stacked blocks.
        lipschitz: Lipschitz bound ``c < 1`` of each block's residual.
        frequencies: sinusoidal time frequencies of ``g``.
        max_iter: fixed-point iterations per block in :meth:`inverse` (at most).
        tol: stop a block's iteration once the update is below ``tol`` relative to the input scale.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 64,
        depth: int = 2,
        blocks: int = 8,
        lipschitz: float = 0.9,
        frequencies: int = 4,
        max_iter: int = 1000,
        tol: float = 1e-7,
    ) -> None:
        super().__init__()
        if not 0.0 < lipschitz < 1.0:
            raise ValueError(f"lipschitz must be in (0, 1) for the fixed-point inverse to converge, got {lipschitz}")
        if depth < 1 or blocks < 1:
            raise ValueError(f"depth and blocks must be >= 1, got depth={depth}, blocks={blocks}")
        self.dim, self.lipschitz = dim, lipschitz
        self.layers = nn.ModuleList(_ResNetBlock(dim, hidden, depth, lipschitz, frequencies, max_iter, tol) for _ in range(blocks))


class _AffineCoupling(nn.Module):
    r"""Transform the features ``a`` given the others ``b``: :math:`y_a = x_a e^{t s} + t m`, ``(s, m) = NN(x_b, t)``."""

    def __init__(self, dim: int, moved: Tensor, hidden: int, depth: int, frequencies: int, max_log_scale: float) -> None:
        super().__init__()
        self.register_buffer("moved", moved, persistent=False)
        self.register_buffer("kept", ~moved, persistent=False)
        self.max_log_scale = max_log_scale
        self.embedding = SinusoidalEmbedding(frequencies)
        n_moved, n_kept = int(moved.sum()), int((~moved).sum())
        layers: list[nn.Module] = []
        width = n_kept + self.embedding.dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        last = nn.Linear(width, 2 * n_moved)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def scale_shift(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Log-scale and shift of the moved features, already multiplied by ``t`` (zero at t = 0)."""
        s, m = self.net(torch.cat([x[:, self.kept], self.embedding(t)], dim=1)).chunk(2, dim=1)
        s = self.max_log_scale * torch.tanh(s / self.max_log_scale)  # bounded log-scale: stable inverse
        return t[:, None] * s, t[:, None] * m

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        s, m = self.scale_shift(x, t)
        y = x.clone()
        y[:, self.moved] = x[:, self.moved] * torch.exp(s) + m
        return y

    def inverse(self, y: Tensor, t: Tensor) -> Tensor:
        s, m = self.scale_shift(y, t)  # the kept features are the same in x and y
        x = y.clone()
        x[:, self.moved] = (y[:, self.moved] - m) * torch.exp(-s)
        return x


class AffineCouplingFlow(_StackedFlow):
    r"""Stacked time-dependent affine couplings (continuous RealNVP, as in Bilos et al.'s coupling flow).

    Layer ``k`` moves half of the features (alternating halves) given the other half:
    :math:`y_a = x_a \exp(t\, s(x_b, t)) + t\, m(x_b, t)`, :math:`y_b = x_b`. At ``t = 0`` every layer
    is the identity, and for any ``t`` the inverse is closed-form,
    :math:`x_a = (y_a - t\, m) \exp(-t\, s)`: no Lipschitz constraint is needed. The log-scale is
    soft-clamped to ``[-max_log_scale, max_log_scale]``. Exact algebraically, the inverse is
    ill-conditioned in float32 where the log-scales saturate (``layers`` of them can scale a feature
    by up to ``exp(layers * max_log_scale / 2)``): a float32 round trip ``inverse(forward(x))`` was
    measured off by more than ``x`` itself there, against 5e-9 in float64. Invert such a map in
    float64 (``module.double()``), or lower ``max_log_scale``.

    Args:
        dim: data dimension (vectors ``(n, dim)``, ``dim >= 2``).
        hidden: width of each coupling network.
        depth: hidden layers of each coupling network.
        layers: coupling layers (even, so every feature is moved equally often).
        frequencies: sinusoidal time frequencies.
        max_log_scale: bound of the log-scale.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 2, layers: int = 8, frequencies: int = 4, max_log_scale: float = 3.0) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError(f"AffineCouplingFlow needs dim >= 2 to split the features, got dim={dim}")
        half = torch.arange(dim) < math.ceil(dim / 2)
        self.layers = nn.ModuleList(
            _AffineCoupling(dim, half if k % 2 == 0 else ~half, hidden, depth, frequencies, max_log_scale) for k in range(layers)
        )
