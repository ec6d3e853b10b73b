"""The whole training step as one CUDA graph per batch shape (a *bucket*), replayed.

Why: the compact network at 252 px is bound by kernel launches, not arithmetic. An eager
stage-1 step issues tens of thousands of small kernels from Python (measured on an H200: 1.16 s
of host time against 0.20 s of GPU time per step); a replayed graph issues them from the GPU's
own queue in one call.

What one graph holds, in order (:meth:`GraphedStep._body`):

1. the gradients zeroed in place (they are persistent tensors, shared by every bucket);
2. the :class:`~da3gs.train.step.StepModule` forward with ``mixed`` conditioning (pose-free and
   pose-conditioned samples in one forward, selected by a mask on the device), the loss and
   the backward;
3. global-norm clipping, and the non-finite flag ``bad = !isfinite(loss) | !isfinite(norm)``;
4. fused AdamW (``capturable``; learning rates in device tensors) that skips the update on the
   device when ``bad`` is set (the optimizer's ``found_inf``: parameters, moments and the step
   count stay as they were, as in the eager skip);
5. the EMA, ``lerp(ema, w, (1 - d) * (1 - bad))``;
6. the non-finite counters (``bad_total``, ``bad_in_row``) and the step's outputs (loss,
   gradient norm, flag, loss parts) written into persistent device buffers.

A step's host work is: copy the batch into the bucket's static inputs (device to device),
fill the learning-rate and EMA-weight tensors (two small kernels), replay. Nothing is read
back: the loop reads the outputs and the counters when it logs (:meth:`GraphedStep.read`).

Capture: the first capture of a process is preceded by one eager warm-up step on a side stream
(lazy initialisation: cuBLAS workspaces, the optimizer state, autograd's device threads), run
with the update forced off, so the weights do not change. Each new bucket is captured the first
time it is seen (the eager step's host work, once; no compilation), then replayed. All graphs
share one memory pool (they never run concurrently), and the static inputs of every bucket
are views of one flat buffer per field, sized up front for the largest shape of the data
stream (:meth:`GraphedStep.reserve`), so memory is that of the largest bucket, not the sum.

Rules the captured code keeps (tested on the CPU with a dispatch-mode sync detector,
``tests/train/test_graphs.py``): no host reads of device values (``item``, ``nonzero``,
``bool(tensor)``, boolean-mask indexing), no allocation outside the pool that outlives the
capture, the same kernel sequence whatever the values of the batch. The backbone's
position-embedding and RoPE caches are bypassed while capturing (a cached tensor made inside
one graph would be read by another, and freed when a ``train()`` call clears the cache).

On the CPU there is nothing to capture: :meth:`GraphedStep.step` runs the same body eagerly
(the tests check its logic and its sync-freedom there).

Differences from the eager step: a skipped (non-finite) update still counts as a step (the
learning-rate schedule moves on; the eager loop does not advance); the skip is known to the
host only when it reads the counters. Several processes (DDP/FSDP) keep the eager step.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import fields

import torch
from torch import nn

from da3gs.data.batch import ViewBatch
from da3gs.train.step import StepModule, StepResult

__all__ = ["CaptureError", "GraphedStep"]


class CaptureError(RuntimeError):
    """Capturing a bucket's step failed (an op that cannot be captured, a library doing host
    work mid-capture). Nothing was updated: the caller may continue with the eager step after
    :meth:`GraphedStep.release`."""

# per pixel (B * V * H * W) channels, per view (B * V) elements, per sample (B) elements
_PER_PIXEL = {"images": 3, "depth": 1, "valid": 1, "sky": 1}
_PER_VIEW = {"c2w": 16, "K": 9}
_PER_SAMPLE = {"pose_conditioned": 1}


def _numel(name: str, pixels: int, views: int, samples: int) -> int:
    if name in _PER_PIXEL:
        return pixels * _PER_PIXEL[name]
    if name in _PER_VIEW:
        return views * _PER_VIEW[name]
    return samples * _PER_SAMPLE[name]


@contextmanager
def _uncached(net: nn.Module):
    """Bypass the per-size caches of ``net``'s modules (``use_cache`` attributes)."""
    mods = [m for m in net.modules() if getattr(m, "use_cache", None) is True]
    for m in mods:
        m.use_cache = False
    try:
        yield
    finally:
        for m in mods:
            m.use_cache = True


class GraphedStep:
    """Training steps replayed from one CUDA graph per bucket (module docstring).

    Args:
        module: a :class:`StepModule` whose objective can be captured (``capture_fields``:
            the batch fields its loss reads, e.g. ``Stage1Objective(mixed=True)``); on CUDA
            the steps are graphs, on the CPU the same body runs eagerly.
        params: its trainable parameters (the optimizer's).
        opt: a fused AdamW built with ``capturable=True`` (:func:`da3gs.train.optim.
            build_optimizer`); its learning rates become device tensors (``set_lr`` fills them).
        ema: the :class:`~da3gs.train.ema.EMA` or None.
        grad_clip: global-norm clip (<= 0: none).

    ``step(batch, step)`` runs optimizer step ``step`` (0-based; the EMA's decay warm-up
    follows it) and returns a :class:`StepResult` whose tensors are views of the persistent
    output buffer: valid until the next call. ``read()`` returns the non-finite counters.
    Attributes ``captures`` (graphs made) and ``capture_s`` (seconds spent capturing, the
    warm-up included) tell the warm-up cost.
    """

    def __init__(self, module: StepModule, params: list[torch.Tensor],
                 opt: torch.optim.Optimizer, ema=None, grad_clip: float = 0.0):
        dev = params[0].device
        self.capture = dev.type == "cuda"
        fields_ = getattr(module.objective, "capture_fields", None)
        if fields_ is None:
            raise ValueError("GraphedStep needs an objective with capture_fields, e.g. "
                             "Stage1Objective(mixed=True)")
        if not all(g.get("capturable") and g.get("fused") for g in opt.param_groups):
            raise ValueError("GraphedStep needs AdamW(fused=True, capturable=True)")
        self.module, self.params, self.opt, self.ema = module, params, opt, ema
        self.max_norm = grad_clip if grad_clip > 0 else float("inf")
        self.device = dev
        self.fields = tuple(fields_)
        module.objective.autocast_cache = False  # autocast's cast cache cannot outlive replays
        for g in opt.param_groups:  # learning rates the graphs read from the device
            if not isinstance(g["lr"], torch.Tensor):
                g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32, device=dev)
        self.flag = torch.zeros((), device=dev)  # 1.0: skip this update (optimizer's found_inf)
        opt.found_inf = self.flag
        self.ema_weight = torch.zeros((), device=dev)
        self.bad_total = torch.zeros((), device=dev)
        self.bad_in_row = torch.zeros((), device=dev)
        self.out: torch.Tensor | None = None  # [loss, grad_norm, bad, *parts]
        self.part_names: list[str] = []
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.stream = torch.cuda.Stream(dev) if self.capture else None
        self._flat: dict[str, torch.Tensor] = {}
        self._static: dict[tuple, ViewBatch] = {}
        self._sizes = (0, 0, 0)
        self._warm = False
        self.captures = 0
        self.capture_s = 0.0
        with torch.no_grad():
            for p in params:  # persistent gradients: every graph accumulates into these
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        self.grads = [p.grad for p in params]

    # ------------------------------------------------------------------ inputs

    def reserve(self, shapes) -> None:
        """Size the flat input buffers for every ``(V, (H, W), B)`` in ``shapes`` (the data
        stream's shape set), so that no later bucket needs a larger buffer (a larger one
        reallocates and drops the graphs made so far: correct, but they are captured again)."""
        px = max(B * V * H * W for V, (H, W), B in shapes)
        views = max(B * V for V, _, B in shapes)
        samples = max(B for _, _, B in shapes)
        self._sizes = tuple(max(a, b) for a, b in zip(self._sizes, (px, views, samples)))

    def _key(self, batch: ViewBatch) -> tuple:
        parts = []
        for name in self.fields:
            v = getattr(batch, name)
            parts.append(None if v is None else (name, tuple(v.shape), v.dtype))
        return tuple(parts)

    def _inputs(self, key: tuple, batch: ViewBatch) -> ViewBatch:
        """The bucket's static inputs (views of the flat buffers), allocated on first use."""
        st = self._static.get(key)
        if st is not None:
            return st
        B, V, H, W = batch.shape
        need = (B * V * H * W, B * V, B)
        if any(n > have for n, have in zip(need, self._sizes)) or not self._flat:
            self._sizes = tuple(max(a, b) for a, b in zip(self._sizes, need))
            self._flat.clear()
            self._static.clear()
            self.graphs.clear()  # they read the old buffers
        kw = {}
        for item in key:
            if item is None:
                continue
            name, shape, dtype = item
            flat = self._flat.get((name, dtype))
            if flat is None:
                flat = torch.zeros(_numel(name, *self._sizes), dtype=dtype, device=self.device)
                self._flat[(name, dtype)] = flat
            n = 1
            for s in shape:
                n *= s
            kw[name] = flat[:n].view(shape)
        base = {f.name: None for f in fields(ViewBatch)}
        base.update(kw)
        st = ViewBatch(**base)
        self._static[key] = st
        return st

    def _copy_in(self, st: ViewBatch, batch: ViewBatch) -> None:
        for name in self.fields:
            dst, src = getattr(st, name), getattr(batch, name)
            if dst is None:
                continue
            if dst.device.type == "cuda" and src.device.type == "cpu" and not src.is_pinned():
                src = src.pin_memory()  # a pageable host copy would synchronise
            dst.copy_(src, non_blocking=True)

    # ------------------------------------------------------------------ the step

    def _body(self, inp: ViewBatch, update: bool) -> None:
        """One step on the static inputs; ``update=False`` (warm-up) skips the update."""
        torch._foreach_zero_(self.grads)
        loss, parts = self.module(inp)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
        lv = loss.detach().float()
        norm = norm.detach().float()
        bad = (~torch.isfinite(lv) | ~torch.isfinite(norm)).float()
        if update:
            self.flag.copy_(bad)
        else:
            self.flag.fill_(1.0)
        self.opt.step()  # skipped on the device where flag == 1 (found_inf)
        if self.ema is not None:
            w = self.ema_weight * (1.0 - self.flag)
            shadow, cur = self.ema.tensors(self.module.net)
            torch._foreach_lerp_(shadow, cur, [w] * len(shadow))
        if update:
            self.bad_total.add_(bad)
            self.bad_in_row.add_(1.0).mul_(bad)
        names = sorted(parts)
        vals = torch.stack([lv, norm, bad] + [parts[k].reshape(()).float() for k in names])
        if self.out is None:  # first call (the eager warm-up): allocate outside any graph
            self.out = torch.zeros_like(vals)
            self.part_names = names
        self.out.copy_(vals)

    def _capture(self, key: tuple, inp: ViewBatch) -> torch.cuda.CUDAGraph:
        try:
            return self._capture_once(key, inp)
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as e:
            raise CaptureError(f"CUDA-graph capture of the training step failed for batch shape "
                               f"{tuple(inp.shape)}: {' '.join(str(e).split())[:300]}") from e

    def _capture_once(self, key: tuple, inp: ViewBatch) -> torch.cuda.CUDAGraph:
        t0 = time.perf_counter()
        net = self.module.net
        with _uncached(net):
            if not self._warm:
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.stream):
                    self._body(inp, update=False)  # lazy initialisation, no update
                torch.cuda.current_stream(self.device).wait_stream(self.stream)
                self._warm = True
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool, stream=self.stream):
                self._body(inp, update=True)
        if any(p.grad is not q for p, q in zip(self.params, self.grads)):
            raise RuntimeError("GraphedStep: gradients were reallocated during capture")
        self.graphs[key] = g
        self.captures += 1
        self.capture_s += time.perf_counter() - t0
        return g

    def step(self, batch: ViewBatch, step: int) -> StepResult:
        """Copy ``batch`` in, replay (capturing first for a new bucket); optimizer step
        ``step`` (0-based). The learning rates are whatever ``set_lr`` last filled in."""
        key = self._key(batch)
        inp = self._inputs(key, batch)
        self._copy_in(inp, batch)
        if self.ema is not None:
            self.ema_weight.fill_(1.0 - self.ema.effective_decay(step + 1))
        if not self.capture:
            self._body(inp, update=True)
        else:
            g = self.graphs.get(key)
            if g is None:
                g = self._capture(key, inp)
            g.replay()
        o = self.out
        parts = {k: o[3 + i] for i, k in enumerate(self.part_names)}
        return StepResult(o[0], parts, o[1], o[2])

    def release(self) -> None:
        """Hand the optimizer and objective back to the eager step: learning rates as floats,
        no ``found_inf``, autocast's cache on; the graphs and buffers are dropped."""
        for g in self.opt.param_groups:
            if isinstance(g["lr"], torch.Tensor):
                g["lr"] = float(g["lr"])
        if getattr(self.opt, "found_inf", None) is self.flag:
            del self.opt.found_inf
        self.module.objective.autocast_cache = True
        self.graphs.clear()
        self._static.clear()
        self._flat.clear()

    def read(self) -> tuple[int, int]:
        """``(bad_in_row, bad_total)``: the non-finite counters (one device-to-host copy)."""
        a, b = torch.stack([self.bad_in_row, self.bad_total]).tolist()
        return int(a), int(b)

    def set_counters(self, bad_in_row: int, bad_total: int) -> None:
        """Restore the counters (resume)."""
        self.bad_in_row.fill_(float(bad_in_row))
        self.bad_total.fill_(float(bad_total))
