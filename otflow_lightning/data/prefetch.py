"""Pair the next training batch in a background thread while the current step runs.

``OTPairDataModule(prefetch_coupling=True)`` trains from a :class:`PrefetchingLoader`: when batch
``k`` is handed to Lightning, batch ``k + 1`` is already fetched and its pairing (source draw and OT
solve) is queued on a single worker thread, so the solve overlaps step ``k``. One worker runs the
jobs in submission order with the same generator, so the pairs are bitwise those of the synchronous
path (except that with ``reload_dataloaders_every_n_epochs`` the re-created loader shuffles in
another order from the second epoch on). POT's ``emd``, scipy, ``lapjv`` and torch ops release the
GIL, so the solve runs beside the step rather than between steps.

On CUDA the worker copies the batch and pairs it on its own CUDA stream; the main thread makes its
stream wait for that job's event and marks the tensors as used there (``record_stream``) before
training on them. This CUDA path is not yet measured on a GPU.

:class:`ChunkedLoader` is the other training loader of the data module: it yields OT batches of
``ot_batch_size`` samples, each followed by markers for the further training batches cut from it.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor
from torch.utils.data import DataLoader

__all__ = ["ChunkedLoader", "CouplingPrefetcher", "PairChunk", "PrefetchedPair", "PrefetchingLoader"]


class PrefetchedPair:
    """A training batch whose pairing runs in the background (what the loader yields instead of the batch)."""

    def __init__(self) -> None:
        self.future: Future | None = None
        self.generator_state: Tensor | None = None  # the generator before this batch's draws


class CouplingPrefetcher:
    """One worker thread that pairs raw training batches in submission order.

    Args:
        pair: ``pair(batch) -> Pair``; ``batch`` is already on ``device``. Runs on the worker.
        device: the training device.
        generator: the generator ``pair`` draws from; batches queued but never trained on (the
            loader was left mid-epoch) give their draws back, see :meth:`rewind`.
    """

    def __init__(self, pair: Callable[[Any], Any], device: torch.device, generator: torch.Generator) -> None:
        self.pair, self.device, self.generator = pair, device, generator
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="otflow-coupling")
        self.queued: deque[PrefetchedPair] = deque()  # submitted, not yet waited for

    def submit(self, batch: Any) -> PrefetchedPair:
        prefetched = PrefetchedPair()
        prefetched.future = self.executor.submit(self._run, batch, prefetched)
        self.queued.append(prefetched)
        return prefetched

    def _run(self, batch: Any, prefetched: PrefetchedPair) -> tuple[Any, torch.cuda.Event | None]:
        prefetched.generator_state = self.generator.get_state()
        if self.stream is None:
            return self.pair(move_data_to_device(batch, self.device)), None
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            pair = self.pair(move_data_to_device(batch, self.device))
            done = torch.cuda.Event()
            done.record(self.stream)
        return pair, done

    def wait(self, prefetched: PrefetchedPair) -> Any:
        """The finished ``Pair`` (re-raises the worker's exception), ready for the current stream."""
        if not self.queued or self.queued[0] is not prefetched:
            raise RuntimeError("prefetched batches must be used in the order the loader yields them")
        self.queued.popleft()
        pair, done = prefetched.future.result()
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            for t in (pair.x0, pair.x1, pair.labels, pair.index):
                if t is not None:
                    t.record_stream(stream)  # allocated on the worker's stream, used on this one
        return pair

    def rewind(self) -> None:
        """Drop the queued batches and undo their draws, so the next batch draws what it would without prefetching."""
        for prefetched in self.queued:
            prefetched.future.cancel()  # those not started yet
        wait([prefetched.future for prefetched in self.queued])
        # the first queued job that ran saw the generator as the trained batches left it
        states = [prefetched.generator_state for prefetched in self.queued if prefetched.generator_state is not None]
        if states:
            self.generator.set_state(states[0])
        self.queued.clear()

    def close(self) -> None:
        """Rewind and end the thread."""
        self.rewind()
        self.executor.shutdown(wait=True)


class PairChunk:
    """Stands for training batch ``index`` of the OT batch paired just before it (``ot_batch_size``)."""

    def __init__(self, index: int) -> None:
        self.index = index


class ChunkedLoader(DataLoader):
    """A ``DataLoader`` of OT batches that yields each one, then ``chunks - 1`` :class:`PairChunk`
    markers: the data module pairs the OT batch once and serves it as ``chunks`` training batches.
    Staying a ``DataLoader`` lets Lightning swap in a distributed sampler under DDP."""

    def __init__(self, *args: Any, chunks: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chunks = chunks

    def _batches(self) -> Iterator[Any]:
        return super().__iter__()

    def __iter__(self) -> Iterator[Any]:
        for batch in self._batches():
            yield batch
            for index in range(1, self.chunks):
                yield PairChunk(index)

    def __len__(self) -> int:
        return super().__len__() * self.chunks


class PrefetchingLoader(ChunkedLoader):
    """A ``DataLoader`` that yields :class:`PrefetchedPair` s, submitting each batch one batch ahead.

    Each new iteration (epoch) first rewinds what the last one queued but never handed out or
    Lightning never used (``limit_train_batches``, a restart mid-epoch). With ``chunks > 1``
    (``ot_batch_size``) each OT batch is followed by its :class:`PairChunk` markers, so the next OT
    batch's solve overlaps all the training steps cut from the current one.

    Args:
        *args, **kwargs: those of :class:`ChunkedLoader` (``DataLoader``'s and ``chunks``).
        prefetcher: the :class:`CouplingPrefetcher` (passed through ``__init__`` so that Lightning
            can re-create the loader with a distributed sampler).
    """

    def __init__(self, *args, prefetcher: CouplingPrefetcher | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prefetcher = prefetcher

    def _batches(self) -> Iterator[PrefetchedPair]:
        if self.prefetcher is None:
            raise RuntimeError("PrefetchingLoader needs prefetcher=...; build it through OTPairDataModule(prefetch_coupling=True)")
        self.prefetcher.rewind()
        ahead: deque[PrefetchedPair] = deque()
        for batch in super()._batches():
            ahead.append(self.prefetcher.submit(batch))
            if len(ahead) == 2:  # batch k goes out once batch k + 1 is queued
                yield ahead.popleft()
        yield from ahead
