"""Micro-batching: inputs that threads ask for at about the same time share one call of a batch function.

No background thread and no waiting window: the first caller runs the batch function on what is queued (its
own inputs, alone when nobody else is asking: a lone visitor waits for nothing); callers arriving meanwhile
queue up, and when it finishes one of them runs a single call for all of them. So under load the batches grow
by themselves (16 visitors' query texts in one encoder forward instead of 16), and alone nothing changes: the
call is exactly the one that would have run without the batcher.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Request(Generic[K, V]):
    __slots__ = ("keys", "values", "error")

    def __init__(self, keys: list[K]) -> None:
        self.keys = keys
        self.values: list[V] | None = None
        self.error: BaseException | None = None


class MicroBatcher(Generic[K, V]):
    """`batcher(keys)` -> `fn(keys)`'s values for them, in order; concurrent callers' keys go to `fn` together
    (each distinct key once, in arrival order, at most `max_batch` per call). When a shared call raises, each
    caller's keys are tried alone, so an exception reaches only the callers whose own keys raise it."""

    def __init__(self, fn: Callable[[list[K]], Sequence[V]], max_batch: int = 64) -> None:
        self.fn, self.max_batch = fn, max_batch
        self._queue: list[_Request[K, V]] = []
        self._running = False
        self._cond = threading.Condition()
        self.calls = 0          # how many times fn ran
        self.keys_done = 0      # how many keys it was given in all

    def __call__(self, keys: Sequence[K]) -> list[V]:
        request: _Request[K, V] = _Request(list(keys))
        if not request.keys:
            return []
        with self._cond:
            self._queue.append(request)
        while True:
            with self._cond:
                while request.values is None and request.error is None and self._running:
                    self._cond.wait()
                if request.values is not None or request.error is not None:
                    break
                self._running = True  # this caller runs the next batch (the oldest queued requests)
                batch = self._take()
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._running = False
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        return request.values  # type: ignore[return-value]

    def _take(self) -> list[_Request[K, V]]:
        """Queued requests, oldest first, up to max_batch distinct keys (the first request always)."""
        batch: list[_Request[K, V]] = []
        distinct: set[K] = set()
        while self._queue:
            nxt = set(self._queue[0].keys) - distinct
            if batch and len(distinct) + len(nxt) > self.max_batch:
                break
            batch.append(self._queue.pop(0))
            distinct |= nxt
        return batch

    def _run(self, batch: list[_Request[K, V]]) -> None:
        unique = list(dict.fromkeys(k for r in batch for k in r.keys))
        try:
            values = self.fn(unique)
            if len(values) != len(unique):
                raise RuntimeError(f"batch function returned {len(values)} values for {len(unique)} keys")
            self.calls += 1
            self.keys_done += len(unique)
            by_key = dict(zip(unique, values))
            for r in batch:
                r.values = [by_key[k] for k in r.keys]
        except Exception as e:
            if len(batch) == 1:
                batch[0].error = e
                return
            for r in batch:  # one caller's bad input must not fail the others: each alone, as unbatched
                self._run([r])
        except BaseException as e:  # KeyboardInterrupt, SystemExit: every caller of this batch stops
            for r in batch:
                r.error = e
