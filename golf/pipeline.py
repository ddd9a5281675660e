"""Batches for the training loop: the loader plus an optional teacher that runs in the loader (e.g. cached rows
gathered from the memory-mapped cache), prepared one batch ahead in a background thread and pinned there, then
copied to the device without blocking the step."""
from concurrent.futures import ThreadPoolExecutor

import torch

from golf.data import Batch, DistributedTokenLoader


class BatchPipeline:
    def __init__(self, loader: DistributedTokenLoader, global_tokens: int, seq_len: int, accum: int,
                 device: torch.device, teacher=None):
        self.loader = loader
        self.args = (global_tokens, seq_len, accum)
        self.device = device
        self.teacher = teacher  # a teacher whose fetch runs here ("loader"), or None
        self.pin = device.type == "cuda"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._next = self._pool.submit(self._produce)

    def _produce(self) -> tuple[Batch, dict]:
        batch = self.loader.next_batch(*self.args)
        state_after = self.loader.state()
        if self.teacher is not None:
            batch.teacher = self.teacher.fetch(batch)
        if self.pin:
            batch.x, batch.y = batch.x.pin_memory(), batch.y.pin_memory()
            if batch.teacher is not None:
                batch.teacher = batch.teacher.apply(torch.Tensor.pin_memory)
        return batch, state_after

    def next(self) -> Batch:
        """The next batch on the device; the one after it starts preparing immediately."""
        batch, self.state_after_last = self._next.result()
        self._next = self._pool.submit(self._produce)
        nb = self.device.type == "cuda"
        batch.x = batch.x.to(self.device, non_blocking=nb)
        batch.y = batch.y.to(self.device, non_blocking=nb)
        if batch.teacher is not None:
            batch.teacher = batch.teacher.apply(lambda t: t.to(self.device, non_blocking=nb))
        return batch

    def loader_state(self) -> dict:
        """Loader position right after the last batch handed out (what a resumed run continues from)."""
        return self.state_after_last

    def close(self):
        self._next.cancel()
        self._pool.shutdown(wait=True)
