"""Fixed-size selections for the static path of :meth:`.ProceduralGenerator.sample`.

The default path compacts its work with ``nonzero`` and reads group sizes on the host (about 40
host syncs per call, and shapes that change every call). The static path (``ProceduralConfig.
static``, and ``graphs``, which captures it in a CUDA graph) replaces every such compaction by
a selection of a **fixed capacity**: the first ``capacity`` items of a mask (or of each group
of a key), in order, as index tensors of a fixed length, plus a mask of which entries are real.
No value is read on the host, and for a given (B, V, H, W) the call runs the same sequence of
kernels with the same shapes every time.

The capacity of a selection is ``min(n, ceil(fraction * scale * per) + minimum)`` where ``n``
is the number of candidates, ``per`` the number of rays (or pixels) of the trace, ``fraction``
the expected number of selected items per ray from :data:`CAPACITY` (measured, with margin),
``scale`` = ``ProceduralConfig.static_capacity`` and ``minimum`` =
``ProceduralConfig.static_min_capacity`` (small calls are therefore dense and exact). Items
beyond a capacity are dropped (a pair not intersected, a pixel not textured: a visible error)
and counted in :attr:`Budget.overflow`, a device tensor (read it when convenient; reading
syncs). ``Budget.counts`` keeps every selection's count for the statistics behind
:data:`CAPACITY` (``scripts/bench_procedural.py --capacity-stats``).

Selections are written back through a *sink*: :attr:`Selection.dest` is the item's index for
real entries and ``n`` for padding, so outputs carry one extra row that absorbs the padding's
writes (padding gathers a real item, so its arithmetic stays finite, but never lands).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["CAPACITY", "Budget", "Selection", "LazySceneIds"]

#: Expected selected items per ray (per pixel for ``surface/*``) of each selection, with margin.
#: Keys: ``{trace}/{group}`` with trace ``closest`` (primary rays), ``approx`` (the cameras'
#: low-resolution check, tori and blends as bounding spheres), ``any`` (shadow rays, per
#: (pixel, light)); groups: analytic types, ``sdf{family}`` (tori / blends whose bounding sphere
#: the ray meets) and ``march{family}@{step}`` (pairs still marching at that step); ``surface/
#: normal{family}`` (torus / blend pixels), ``surface/tex{kind}`` (pixels of a texture kind),
#: ``surface/sky``. Unknown names get :data:`DEFAULT_FRACTION`. Measured on the CPU
#: (``scripts/bench_procedural.py --capacity-stats``: 12 calls of 8 x 4 views at 48 x 48, with the
#: six scene kinds and eleven texture kinds of the default config): the largest per-call fraction
#: times about 1.5-2.5 (most calls use about half of it; calls with more samples vary less).
CAPACITY: dict[str, float] = {
    **{f"closest/{k}": v for k, v in dict(sphere=0.3, box=1.2, cylinder=0.5, quad=0.6, sdf0=0.3, sdf1=0.35).items()},
    **{f"approx/{k}": v for k, v in dict(sphere=0.3, box=1.4, cylinder=0.5, quad=0.7, torus=0.6).items()},
    **{f"any/{k}": v for k, v in dict(sphere=0.08, box=0.55, cylinder=0.2, quad=0.2, sdf0=0.18, sdf1=0.22).items()},
    **{f"{trace}/march{f}@{step}": v for trace, fams in (
        ("closest", ((0.25, 0.2, 0.11, 0.06, 0.03, 0.012, 0.005), (0.3, 0.17, 0.085, 0.035, 0.012, 0.005, 0.0025))),
        ("any", ((0.13, 0.11, 0.08, 0.04, 0.02, 0.015, 0.012), (0.2, 0.11, 0.06, 0.028, 0.014, 0.0075, 0.0045))))
       for f, fracs in enumerate(fams) for step, v in zip((0, 3, 6, 10, 15, 22, 30), fracs)},
    **{f"surface/{k}": v for k, v in dict(normal0=0.12, normal1=0.14, sky=0.25, tex0=0.3, tex1=0.3, tex2=0.3, tex3=0.4,
                                          tex4=0.3, tex5=0.95, tex6=0.4, tex7=0.3, tex8=0.35, tex9=0.3,
                                          tex10=0.4).items()},
}
DEFAULT_FRACTION = 1.0


@dataclass
class Selection:
    """A fixed-size selection of C of n items.

    idx: (C,) long gather index (padding repeats a real item); valid: (C,) bool, real entries;
    dest: (C,) long write index (``idx`` for real entries, ``n``, a sink row, for padding).
    """

    idx: torch.Tensor
    valid: torch.Tensor
    dest: torch.Tensor

    def put(self, out: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Write ``values`` (C, ...) into ``out`` (n + 1, ...) (the last row is the sink), in place."""
        out[self.dest] = values
        return out


def with_sink(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) -> (n + 1, ...): a copy with one more row (a copy of row 0) for :meth:`Selection.put`."""
    return torch.cat([x, x[:1]])


class Budget:
    """Capacities and overflow of one static ``sample`` call.

    Args:
        scale: multiplies every fraction of :data:`CAPACITY`.
        minimum: added to every capacity (calls this small are dense and exact).
        device: where :attr:`overflow` lives.
    Attributes:
        overflow: () long, items dropped by all selections so far (0 when every capacity held).
        counts: list of (name, count () long tensor, capacity, per) of every selection.
    """

    def __init__(self, scale: float, minimum: int, device):
        self.scale, self.minimum = float(scale), int(minimum)
        self.overflow = torch.zeros((), dtype=torch.long, device=device)
        self.counts: list[tuple[str, torch.Tensor, int, int]] = []

    def capacity(self, name: str, per: int, n: int) -> int:
        """Capacity of selection ``name`` of n candidates in a trace of ``per`` rays (host ints)."""
        frac = CAPACITY.get(name, DEFAULT_FRACTION) * self.scale
        return max(1, min(n, math.ceil(frac * per) + self.minimum))

    def _record(self, name: str, count: torch.Tensor, cap: int, per: int):
        count = count.long()
        self.overflow += (count - cap).clamp_min(0)
        self.counts.append((name, count, cap, per))

    def select(self, mask: torch.Tensor, name: str, per: int) -> Selection:
        """The first ``capacity`` True items of ``mask`` (any shape, flattened), in order.

        A cumulative count (int32) and a binary search of the ranks 1..C: no host sync."""
        m = mask.reshape(-1)
        n = m.numel()
        cap = self.capacity(name, per, n)
        cs = m.cumsum(0, dtype=torch.int32)
        pos = torch.searchsorted(cs, torch.arange(1, cap + 1, device=m.device, dtype=torch.int32))
        self._record(name, cs[-1], cap, per)
        return _selection(pos, pos < n, n, None)

    def groups(self, key: torch.Tensor, names: Sequence[str], per: int) -> list[Selection]:
        """For each group g < G = len(names), the first ``capacity`` items with ``key == g`` (in
        order). key: (n,) integer in [0, G] (G: in no group). One stable sort of the key (as
        uint8) for all groups; no host sync."""
        k = key.reshape(-1).to(torch.uint8)
        n, G = k.numel(), len(names)
        sk, order = torch.sort(k, stable=True)
        starts = torch.searchsorted(sk, torch.arange(G + 1, device=k.device, dtype=torch.uint8))
        out = []
        for g, name in enumerate(names):
            cap = self.capacity(name, per, n)
            pos = starts[g] + torch.arange(cap, device=k.device)
            self._record(name, starts[g + 1] - starts[g], cap, per)
            out.append(_selection(pos, pos < starts[g + 1], n, order))
        return out


def _selection(pos: torch.Tensor, valid: torch.Tensor, n: int, order: torch.Tensor | None) -> Selection:
    pos = pos.clamp_max(n - 1)
    idx = pos if order is None else order[pos]
    return Selection(idx=idx, valid=valid, dest=torch.where(valid, idx, n))


class LazySceneIds(Sequence):
    """``ViewBatch.scene_ids`` of a static call: B strings made from device tensors of scene kinds
    and camera modes only when first read (the read syncs; the ``sample`` call itself does not).

    Args:
        codes: (2, B) long device tensor: scene kind and camera mode per sample.
        fmt: callable (kind, mode, i) -> str.
    """

    def __init__(self, codes: torch.Tensor, fmt):
        self._codes, self._fmt, self._ids = codes, fmt, None
        self._n = int(codes.shape[1])

    def _get(self) -> list[str]:
        if self._ids is None:
            kinds, modes = self._codes.tolist()
            self._ids = [self._fmt(k, m, i) for i, (k, m) in enumerate(zip(kinds, modes))]
        return self._ids

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        return self._get()[i]

    def __eq__(self, other) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    def __repr__(self) -> str:
        return repr(self._get())
