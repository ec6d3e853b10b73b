"""Batches made ahead of the training step, in a background thread on a side CUDA stream.

Measured on an H100 (docs/benchmarks.md, issue 20): the CUDA-graphed stage-1 step trains at
about 1,470 images/s once its batches are on the device, but the procedural generator makes
about 1,050 images/s at 256 x 256 and, called in line, the two add up: 467 images/s end to
end. The generator's time is mostly host work (kernel launches and a few host reads); the
graphed step's host work is one replay. So a thread that draws the next batches while the GPU
runs the step hides most of the generator: :class:`Prefetcher` keeps ``depth`` batches ready.

Same batches, same order: the sources draw each batch from explicit seeds (its step number),
never from the global RNG, so a batch does not depend on when it is made. The stream position
that checkpoints save is the *consumer's* (:meth:`Prefetcher.state_dict` returns the wrapped
source's state as it was right after the last batch handed out), so resuming is unchanged.

On CUDA each batch is made on a side stream; the consumer's stream waits on an event recorded
after it (no host sync), and every tensor of the batch is marked as used on the consumer's
stream (``record_stream``) so the caching allocator does not hand its memory back to the side
stream while the step still reads it.
"""

from __future__ import annotations

import copy
import queue
import threading
from contextlib import nullcontext
from dataclasses import fields, is_dataclass
from typing import Iterator

import torch

__all__ = ["Prefetcher"]

_STOP_POLL_S = 0.1


def _tensors(batch) -> list[torch.Tensor]:
    if is_dataclass(batch):
        return [v for v in (getattr(batch, f.name) for f in fields(batch))
                if isinstance(v, torch.Tensor)]
    if isinstance(batch, dict):
        return [v for v in batch.values() if isinstance(v, torch.Tensor)]
    if isinstance(batch, (list, tuple)):
        return [v for v in batch if isinstance(v, torch.Tensor)]
    return [batch] if isinstance(batch, torch.Tensor) else []


class Prefetcher:
    """Iterator over ``source``'s batches, made ``depth`` ahead by one background thread.

    Args:
      source: an iterator of batches (a :class:`~da3gs.data.batch.ViewBatch` or any dataclass /
        dict / tuple of tensors); its ``state_dict`` / ``load_state_dict``, when it has them,
        are exposed at the consumer's position.
      depth: batches kept ready (>= 1).
      device: where the batches are made; on CUDA a side stream is used (see the module
        docstring), elsewhere the thread only overlaps host work.

    An exception raised by the source is re-raised by ``next()`` in the consumer, after the
    batches made before it. :meth:`close` (also on garbage collection) stops the thread; a
    closed prefetcher restarts on the next ``next()``.
    """

    def __init__(self, source: Iterator, depth: int = 2, device: torch.device | str | None = None):
        if depth < 1:
            raise ValueError(f"depth: expected >= 1, got {depth}")
        self.source, self.depth = source, int(depth)
        self.device = torch.device(device) if device is not None else None
        self._q: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stream = None
        has_state = hasattr(source, "state_dict")
        self._state = copy.deepcopy(source.state_dict()) if has_state else None
        self.generator = getattr(source, "generator", None)  # what bench scripts reach for

    # --- the producer ------------------------------------------------------------------------
    def _start(self) -> None:
        cuda = self.device is not None and self.device.type == "cuda"
        if cuda and self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        self._stop.clear()
        self._q = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._produce, args=(self._q,),
                                        name="da3gs-prefetch", daemon=True)
        self._thread.start()

    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=_STOP_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, q: queue.Queue) -> None:
        stream = self._stream
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        has_state = hasattr(self.source, "state_dict")
        while not self._stop.is_set():
            try:
                with torch.cuda.stream(stream) if stream is not None else nullcontext():
                    batch = next(self.source)
                    event = None
                    if stream is not None:
                        event = torch.cuda.Event()
                        event.record(stream)
                state = copy.deepcopy(self.source.state_dict()) if has_state else None
            except BaseException as e:  # noqa: BLE001  (handed to the consumer, incl. StopIteration)
                self._put(q, ("error", e))
                return
            if not self._put(q, ("batch", (batch, state, event))):
                return

    # --- the consumer ------------------------------------------------------------------------
    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self):
        if self._thread is None:
            self._start()
        kind, item = self._q.get()
        if kind == "error":
            self._thread.join()
            self._thread = None
            raise item
        batch, state, event = item
        if event is not None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(event)
            for t in _tensors(batch):
                if t.device.type == "cuda":
                    t.record_stream(cur)
        self._state = state
        return batch

    def close(self) -> None:
        """Stop the thread. The batches made ahead are dropped and the source, when it has a
        ``load_state_dict``, goes back to the consumer's position, so a later ``next()`` makes
        them again in the same order."""
        t = self._thread
        if t is None:
            return
        self._stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                pass
            t.join(timeout=_STOP_POLL_S)
        self._thread = self._q = None
        if self._state is not None and hasattr(self.source, "load_state_dict"):
            self.source.load_state_dict(copy.deepcopy(self._state))  # back to the consumer's
            # position: a restart makes the dropped batches again, in order

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

    # --- position ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The wrapped source's state right after the last batch handed out."""
        if self._state is None:
            raise AttributeError("the wrapped source has no state_dict")
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        """Stop the thread, move the source to ``state``; the next ``next()`` restarts."""
        self.close()
        self.source.load_state_dict(state)
        self._state = copy.deepcopy(state)
