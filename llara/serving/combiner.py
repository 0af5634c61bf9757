"""Requests that arrive while the model is busy are answered together, in one batched pass.

A CPU model answers one request at a time (``Predictor.lock``). Rather than queueing the requests one behind the
other, each one leaves its job in a shared list and waits for the lock; whichever request gets the lock runs every
job waiting at that moment as one batch (up to ``max_batch``) and hands each its result. Under load the batches
grow by themselves; alone, a request is a batch of one and pays nothing extra. No thread of its own, no timer.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Job:
    payload: Any
    queued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Combiner:
    """Runs ``run(payloads) -> results`` (same length, same order) over every job waiting for ``lock``."""

    def __init__(self, lock: threading.Lock, run: Callable[[list[Any]], list[Any]], max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.lock, self.run, self.max_batch = lock, run, max_batch
        self._pending: list[_Job] = []
        self._pending_lock = threading.Lock()
        self.batch_sizes: list[int] = []  # every batch run so far (for the load benchmark)

    def submit(self, payload: Any) -> tuple[Any, float]:
        """The result for ``payload`` and the seconds it waited before its batch started."""
        job = _Job(payload)
        with self._pending_lock:
            self._pending.append(job)
        while not job.done.is_set():
            with self.lock:
                if job.done.is_set():  # a batch run by another request answered it while this one waited
                    break
                with self._pending_lock:
                    batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
                started = time.perf_counter()
                try:
                    results = self.run([j.payload for j in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"a batch of {len(batch)} jobs gave {len(results)} results")
                except Exception as err:  # noqa: BLE001 - every job of the batch gets the error, raised in its thread
                    for j in batch:
                        j.error = err
                else:
                    for j, result in zip(batch, results):
                        j.result = result
                self.batch_sizes.append(len(batch))
                for j in batch:
                    j.started = started
                    j.done.set()
        if job.error is not None:
            raise job.error
        return job.result, job.started - job.queued
