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

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..utils import check_plugin, import_function
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
    """Add ``draw`` to :data:`SOURCES` under ``name`` (returns it; without ``draw``, a decorator:
    ``@register_source("square")``). ``TypeError`` for a name that is no string or a function that
    does not take ``(n, shape, generator=..., device=...)``."""
    if draw is None and not callable(name):
        return lambda fn: register_source(name, fn)
    check_plugin("source", name, draw, "fn(n, shape, generator=..., device=...)", 2, (2,), generator=None, device=None)
    if name in TOYS:
        raise ValueError(f"source name {name!r} is taken by a 2D toy; register yours under another name")
    SOURCES[name] = draw
    return draw


def _source(name: str) -> Source | None:
    """The function of source ``name``: registered, a toy (``None``), or imported from a
    ``module.function`` path (registered under that name once :func:`check_source` accepts it)."""
    if name in SOURCES:
        return SOURCES[name]
    if name in TOYS:
        return None
    draw, why = import_function(name) if isinstance(name, str) else (None, "")
    if draw is None:
        raise ValueError(f"unknown source {name!r}{f' ({why})' if why else ''}; choose 'gaussian', a 2D toy "
                         f"{sorted(set(TOYS) - {'gaussian'})}, a registered source "
                         f"{sorted(set(SOURCES) - {'gaussian'}) or '(none registered)'}, or the import path of a "
                         "function draw(n, shape, generator=None, device=None) -> (n, *shape) (a source registered "
                         "in Python must be registered again in a new process, before a checkpoint is loaded)")
    return draw


def _drawn(name: str, x, n: int, shape: Sequence[int]) -> Tensor:
    """A source's draw as a tensor, ``ValueError`` unless it is ``(n, *shape)``."""
    x = torch.as_tensor(x)
    if tuple(x.shape) != (n, *shape):
        raise ValueError(f"source {name!r} drew shape {tuple(x.shape)} for n={n} and data of shape {tuple(shape)}; "
                         f"it must return (n, *shape) = {(n, *shape)}")
    return x if x.is_floating_point() else x.float()


def check_source(name: str, shape: Sequence[int] | None = None) -> None:
    """Raise ``ValueError`` if ``name`` is no known source, a 2D toy for non-2D data, or a source of
    your own that does not draw ``(n, *shape)``."""
    imported = isinstance(name, str) and name not in SOURCES and name not in TOYS
    draw = _source(name)
    if draw is None and shape is not None and tuple(shape) != (2,):
        raise ValueError(f"source {name!r} is a 2D toy but the data have shape {tuple(shape)}; use source='gaussian'")
    if imported:
        register_source(name, draw)  # checks its signature
    if draw is not None and name != "gaussian" and shape is not None:
        try:
            _drawn(name, draw(2, tuple(shape), generator=torch.Generator().manual_seed(0)), 2, tuple(shape))
        except Exception as err:
            if imported:
                del SOURCES[name]  # not a source after all
            if isinstance(err, ValueError):
                raise
            raise ValueError(f"source {name!r} failed on a trial draw of 2 samples of shape {tuple(shape)}: "
                             f"{type(err).__name__}: {err}") from err


def draw_source(name: str, n: int, shape: Sequence[int], generator: torch.Generator | None = None, device=None) -> Tensor:
    """Draw ``n`` samples of source ``name`` in ``shape``: ``(n, *shape)`` on ``device``.

    ``gaussian`` is N(0, I) in any shape; a toy name is that 2D toy (see ``toys.py``); any other
    name is a source of :data:`SOURCES` (or an import path, see the module docstring), whose draw is
    checked to be ``(n, *shape)``.
    """
    if name not in SOURCES:
        check_source(name, shape)  # a toy, or an import path to check and register
    draw = _source(name)
    if draw is None:
        return sample_toy(name, n, generator=generator, device=device)
    x = draw(n, tuple(shape), generator=generator, device=device)
    return x if name == "gaussian" else _drawn(name, x, n, tuple(shape)).to(device)
