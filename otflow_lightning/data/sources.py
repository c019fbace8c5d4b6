"""Sources drawn on the device: ``gaussian`` noise of any shape, a 2D toy, or a source of your own.

A source is a function ``draw(n, shape, generator=None, device=None) -> (n, *shape)``. Every part of
the library draws a named source through :func:`draw_source` (the DataModule's training and
validation pairs and its online bank, the modules' ``generate``, the evaluation callbacks), so a
source registered once is used everywhere:

    >>> @register_source("square")
    ... def square(n, shape, generator=None, device=None):
    ...     return 2 * torch.rand(n, *shape, generator=generator, device=device) - 1
    >>> draw_source("square", 3, (2,)).shape
    torch.Size([3, 2])

A config that does not import the module registering it can name the function by its import path
(``data.source: my_project.sources.square``): it is imported and registered under that name.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import torch
from torch import Tensor

from .toys import TOYS, sample_toy

__all__ = ["SOURCES", "register_source", "draw_source", "check_source"]

#: ``draw(n, shape, generator=None, device=None) -> (n, *shape)``
Source = Callable[..., Tensor]


def _gaussian(n: int, shape: Sequence[int], generator: torch.Generator | None = None, device=None) -> Tensor:
    """N(0, I) in any shape."""
    return torch.randn(n, *shape, generator=generator, device=device)


#: sources by name besides the 2D toys (:data:`~otflow_lightning.data.TOYS`, 2D only)
SOURCES: dict[str, Source] = {"gaussian": _gaussian}


def register_source(name: str, draw: Source | None = None):
    """Add ``draw`` to :data:`SOURCES` under ``name`` (returns it; without ``draw``, a decorator)."""
    if draw is None:
        return lambda fn: register_source(name, fn)
    if name in TOYS:
        raise ValueError(f"source name {name!r} is taken by a 2D toy; register yours under another name")
    SOURCES[name] = draw
    return draw


def _source(name: str) -> Source | None:
    """The function of source ``name``: registered, a toy, or imported from a ``module.function`` path."""
    if name in SOURCES:
        return SOURCES[name]
    if name in TOYS:
        return None
    module, _, attr = name.rpartition(".")
    try:
        draw = getattr(importlib.import_module(module), attr) if module else None
    except (ImportError, AttributeError):
        draw = None
    if not callable(draw):
        raise ValueError(f"unknown source {name!r}; choose 'gaussian', a 2D toy {sorted(set(TOYS) - {'gaussian'})}, "
                         f"a registered source {sorted(set(SOURCES) - {'gaussian'}) or '(none registered)'}, or the "
                         "import path of a function draw(n, shape, generator=None, device=None) -> (n, *shape)")
    return register_source(name, draw)


def check_source(name: str, shape: Sequence[int] | None = None) -> None:
    """Raise ``ValueError`` if ``name`` is no known source, a 2D toy for non-2D data, or a source of
    your own that does not draw ``(n, *shape)``."""
    draw = _source(name)
    if draw is None and shape is not None and tuple(shape) != (2,):
        raise ValueError(f"source {name!r} is a 2D toy but the data have shape {tuple(shape)}; use source='gaussian'")
    if draw is not None and name != "gaussian" and shape is not None:
        got = tuple(draw(2, tuple(shape), generator=torch.Generator().manual_seed(0)).shape)
        if got != (2, *shape):
            raise ValueError(f"source {name!r} drew shape {got} for n=2 and data of shape {tuple(shape)}; it must "
                             f"return (n, *shape) = {(2, *shape)}")


def draw_source(name: str, n: int, shape: Sequence[int], generator: torch.Generator | None = None, device=None) -> Tensor:
    """Draw ``n`` samples of source ``name`` in ``shape``: ``(n, *shape)`` on ``device``.

    ``gaussian`` is N(0, I) in any shape; a toy name is that 2D toy (see ``toys.py``); any other
    name is a source of :data:`SOURCES` (or an import path, see the module docstring).
    """
    draw = _source(name)
    if draw is None:
        check_source(name, shape)
        return sample_toy(name, n, generator=generator, device=device)
    return draw(n, tuple(shape), generator=generator, device=device)
