"""Small shared helpers."""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch

__all__ = ["rank_generator", "import_function", "check_plugin"]

_STREAMS = {"source": 0, "val": 1, "time": 2, "sample": 3}


def rank_generator(device: torch.device | str, seed: int, rank: int, step: int = 0, stream: str = "source") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``(seed, rank, step, stream)``.

    ``seed_everything`` gives every DDP rank the same global seed, so noise and times drawn from the
    global RNG are identical across ranks. Draw them from this generator instead: distinct per rank
    and per stream, reproducible, and (keyed by the step) fresh after a resume.
    """
    mixed = (seed * 1_000_003 + rank * 7_919 + step * 104_729 + _STREAMS[stream] * 15_485_863) % (2**63)
    return torch.Generator(device=device).manual_seed(mixed)


def import_function(path: str) -> tuple[Callable | None, str]:
    """The function an import path ``module.function`` names, or ``(None, why not)``: no dot, no
    such module, no such attribute, or not callable. A module that exists but fails to import for
    want of another raises that ``ImportError`` (a missing dependency is not an unknown name)."""
    module, _, attr = path.rpartition(".")
    if not module or not attr:
        return None, ""
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(err.name + ".")):
            return None, f"no module {err.name!r} to import it from"
        raise ImportError(f"importing {module} for {path!r} failed: {err}") from err
    except (ValueError, TypeError):  # a relative name such as "..x"
        return None, ""
    if not hasattr(found, attr):
        return None, f"module {module} has no {attr!r}"
    value = getattr(found, attr)
    return (value, "") if callable(value) else (None, f"{path} is a {type(value).__name__}, not a function")


def check_plugin(kind: str, name, fn, call: str, *example_args, **example_kwargs) -> None:
    """``TypeError`` unless ``name`` is a non-empty string and ``fn`` a function that takes
    ``example_args``/``example_kwargs`` (the ``call`` the library makes, e.g. ``"fn(cost, x0, x1)"``):
    for ``register_source`` / ``register_solver``, so a mistake shows where it is made, not at the
    first training step."""
    if callable(name) and fn is None:
        raise TypeError(f"register_{kind}(name, fn): give the name, e.g. @register_{kind}('mine')")
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"register_{kind}: the name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"register_{kind}({name!r}, fn): fn must be a function, got a {type(fn).__name__}")
    try:
        inspect.signature(fn).bind(*example_args, **example_kwargs)
    except TypeError as err:
        raise TypeError(f"register_{kind}({name!r}, {getattr(fn, '__name__', fn)}): the library calls it as "
                        f"{call}, which its signature does not take ({err})") from None
    except ValueError:  # a builtin without a signature: trust it
        pass
