"""Analytic primitives: slot layout, ray intersections and surface normals in local frames.

Every scene has ``NUM_SLOTS = 24`` primitive slots laid out by type (``SLOTS``); a scene with
fewer primitives leaves slots inactive. Each primitive has a rigid local frame (centre ``c``,
rotation ``R`` whose columns are the local axes in world) and up to 10 shape parameters
``prm``. Rays are intersected in the local frame (``p_l = R^T (p - c)``), where every shape is
axis-aligned:

* sphere: radius ``prm[0]``;
* box: half extents ``prm[0:3]``;
* cylinder: axis local z, radius ``prm[0]``, half height ``prm[1]`` (capped);
* quad: the local xy-plane rectangle ``|x| <= prm[0], |y| <= prm[1]`` (double-sided, thin);
* torus and SDF blends: sphere-traced (:mod:`.sdf`), bounded by their bounding sphere.

The intersection functions are elementwise over broadcast batch dims (the tracer calls them on
the culled pairs of one type), with no data-dependent control flow, so they run unchanged on
the CPU and the GPU (and fuse under ``torch.compile``); :func:`analytic_normal` takes one type
(the caller groups points by type) and :func:`group_by` gives the grouping (one host sync).
A miss is ``BIG`` (a large finite number, never inf, so that products stay NaN-free).
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["SPHERE", "BOX", "CYLINDER", "QUAD", "TORUS", "BLEND", "TYPE_NAMES", "SLOTS",
           "SLOT_START", "NUM_SLOTS", "NUM_PRM", "BIG", "slot_types", "intersect_sphere",
           "intersect_box", "intersect_cylinder", "intersect_quad", "bound_interval",
           "analytic_normal", "bounding_radius", "group_by", "const", "maybe_compile", "use_compile"]

SPHERE, BOX, CYLINDER, QUAD, TORUS, BLEND = range(6)
TYPE_NAMES = ("sphere", "box", "cylinder", "quad", "torus", "blend")
#: Slots per type, in type order; their sum is the maximum primitive count.
SLOTS = (5, 5, 4, 3, 3, 4)
SLOT_START = tuple(sum(SLOTS[:i]) for i in range(len(SLOTS) + 1))
NUM_SLOTS = SLOT_START[-1]
NUM_PRM = 10
BIG = 1e10
_TINY = 1e-12


_CONST: dict = {}


def const(key: str, values, dtype, shape, device) -> torch.Tensor:
    """A small constant tensor, created once per (key, device, shape): no per-call host-to-device
    copy (a copy from host memory would also break CUDA-graph capture, so every constant that
    :meth:`ProceduralGenerator.sample` uses comes from here and is created by a warm-up call)."""
    dev = torch.device(device if device is not None else "cpu")
    k = (key, str(dev), shape)
    if k not in _CONST:
        _CONST[k] = torch.tensor(values, dtype=dtype, device=dev).view(shape)
    return _CONST[k]


def slot_types(device=None) -> torch.Tensor:
    """(NUM_SLOTS,) long: the primitive type of each slot (cached per device; no host sync)."""
    return const("slot_types", [t for t, n in enumerate(SLOTS) for _ in range(n)], torch.long, (NUM_SLOTS,), device)


def _safe(d: torch.Tensor) -> torch.Tensor:
    """Direction components kept away from 0 (sign preserved, +0 -> +tiny)."""
    return torch.where(d.abs() < _TINY, torch.where(d < 0, -_TINY, _TINY), d)


def _pick(tn: torch.Tensor, tf: torch.Tensor, hit: torch.Tensor, tmin: float) -> torch.Tensor:
    """First intersection of an interval [tn, tf] after ``tmin``, or BIG."""
    t = torch.where(tn > tmin, tn, tf)
    return torch.where(hit & (tf > tmin), t, torch.full_like(t, BIG))


def intersect_sphere(o: torch.Tensor, d: torch.Tensor, prm: torch.Tensor, tmin: float) -> torch.Tensor:
    """Ray-sphere. o, d: (..., P, 3) local origin and unit direction; prm: (..., P, NUM_PRM).

    Returns t: (..., P) distance along d to the first hit after tmin, else BIG.
    """
    r = prm[..., 0]
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - r * r
    disc = b * b - c
    s = disc.clamp_min(0).sqrt()
    return _pick(-b - s, -b + s, disc >= 0, tmin)


def intersect_box(o: torch.Tensor, d: torch.Tensor, prm: torch.Tensor, tmin: float) -> torch.Tensor:
    """Ray-box (slabs) for boxes centred at the local origin with half extents prm[..., 0:3].

    o, d: (..., P, 3); returns t: (..., P).
    """
    h = prm[..., 0:3]
    inv = 1.0 / _safe(d)
    t1 = (-h - o) * inv
    t2 = (h - o) * inv
    tn = torch.minimum(t1, t2).amax(-1)
    tf = torch.maximum(t1, t2).amin(-1)
    return _pick(tn, tf, tn <= tf, tmin)


def intersect_cylinder(o: torch.Tensor, d: torch.Tensor, prm: torch.Tensor, tmin: float) -> torch.Tensor:
    """Ray-capped cylinder along local z (radius prm[0], half height prm[1]).

    o, d: (..., P, 3); returns t: (..., P).
    """
    r, h = prm[..., 0], prm[..., 1]
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = d.unbind(-1)
    a = (dx * dx + dy * dy).clamp_min(_TINY)
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - r * r
    disc = b * b - a * c
    s = disc.clamp_min(0).sqrt()
    ts0, ts1 = (-b - s) / a, (-b + s) / a
    invz = 1.0 / _safe(dz)
    tz1, tz2 = (-h - oz) * invz, (h - oz) * invz
    tn = torch.maximum(ts0, torch.minimum(tz1, tz2))
    tf = torch.minimum(ts1, torch.maximum(tz1, tz2))
    return _pick(tn, tf, (disc >= 0) & (tn <= tf), tmin)


def intersect_quad(o: torch.Tensor, d: torch.Tensor, prm: torch.Tensor, tmin: float) -> torch.Tensor:
    """Ray-rectangle in the local xy-plane (half sizes prm[0], prm[1]), both sides.

    o, d: (..., P, 3); returns t: (..., P).
    """
    t = -o[..., 2] / _safe(d[..., 2])
    x = o[..., 0] + t * d[..., 0]
    y = o[..., 1] + t * d[..., 1]
    hit = (x.abs() <= prm[..., 0]) & (y.abs() <= prm[..., 1]) & (t > tmin)
    return torch.where(hit, t, torch.full_like(t, BIG))


def bound_interval(o: torch.Tensor, d: torch.Tensor, radius: torch.Tensor, tmin: float):
    """Entry/exit of the bounding sphere (centred at the local origin).

    o, d: (..., P, 3); radius: (..., P). Returns (t0, t1, hit), each (..., P); t0 >= tmin.
    """
    b = (o * d).sum(-1)
    c = (o * o).sum(-1) - radius * radius
    disc = b * b - c
    s = disc.clamp_min(0).sqrt()
    t0, t1 = (-b - s).clamp_min(tmin), -b + s
    return t0, t1, (disc > 0) & (t1 > t0)


def analytic_normal(ptype: int, p: torch.Tensor, prm: torch.Tensor) -> torch.Tensor:
    """Local-frame outward normals of hits on primitives of one analytic type.

    ptype: SPHERE, BOX, CYLINDER or QUAD; p: (N, 3) local hit points; prm: (N, NUM_PRM).
    Returns (N, 3) unit normals (quads give +z; the caller flips normals toward the ray).
    The caller groups points by type, so only the type's own formula is evaluated.
    """
    if ptype == SPHERE:
        return p / p.norm(dim=-1, keepdim=True).clamp_min(_TINY)
    if ptype == QUAD:
        return torch.zeros_like(p).index_fill_(-1, const("two", (2,), torch.long, (1,), p.device), 1.0)
    sgn = torch.where(p < 0, -1.0, 1.0)
    if ptype == BOX:  # the axis where the point is closest to a face
        r = p.abs() / prm[:, 0:3].clamp_min(_TINY)
        return sgn * _first_max(r)
    # cylinder: cap if the height ratio beats the radial ratio
    x, y, z = p.unbind(-1)
    rad = torch.hypot(x, y)
    cap = (z.abs() / prm[:, 1].clamp_min(_TINY)) > (rad / prm[:, 0].clamp_min(_TINY))
    rc = rad.clamp_min(_TINY)
    return torch.where(cap[:, None], torch.stack([torch.zeros_like(x), torch.zeros_like(x), sgn[:, 2]], -1),
                       torch.stack([x / rc, y / rc, torch.zeros_like(x)], -1))


def _first_max(r: torch.Tensor) -> torch.Tensor:
    """(N, 3) one-hot of the first maximal component (ties go to x, then y)."""
    return (r.argmax(-1, keepdim=True) == torch.arange(3, device=r.device)).to(r.dtype)  # one_hot would sync


def bounding_radius(ptype: torch.Tensor, prm: torch.Tensor) -> torch.Tensor:
    """Radius of a sphere at the local origin enclosing each primitive.

    ptype: (..., P) long; prm: (..., P, NUM_PRM). Returns (..., P).
    """
    sph = prm[..., 0]
    box = prm[..., 0:3].norm(dim=-1)
    cyl = prm[..., 0:2].norm(dim=-1)
    quad = prm[..., 0:2].norm(dim=-1)
    tor = prm[..., 0] + prm[..., 1]
    # blends (see sdf.py): max over the parts' extents plus rounding / thickness
    a, off, rs, th = prm[..., 0:3], prm[..., 3:6], prm[..., 6], prm[..., 9]
    op = prm[..., 8].round()
    b0 = torch.maximum(a.norm(dim=-1) + th, off.norm(dim=-1) + rs)
    b2 = rs + th
    b3 = torch.maximum(torch.maximum(a[..., 0], a[..., 2]), off.norm(dim=-1)) + th
    blend = torch.where(op == 2, b2, torch.where(op == 3, b3, b0))
    out = torch.stack([sph, box, cyl, quad, tor, blend], -1)
    return out.gather(-1, ptype.unsqueeze(-1)).squeeze(-1) * 1.001 + 1e-4


def group_by(key: torch.Tensor, num: int) -> tuple[torch.Tensor, list[int]]:
    """Stable order of ``key`` (M,) long in [0, num) and the start of each group plus the end
    (a list of num + 1 ints; one host sync, no ``bincount``, which syncs on its own)."""
    order = torch.argsort(key, stable=True)
    starts = torch.searchsorted(key[order], torch.arange(num + 1, device=key.device, dtype=key.dtype))
    return order, starts.tolist()


_COMPILED: dict = {}
#: Tests only: also compile on the CPU (normally ``compile`` applies to CUDA tensors only).
COMPILE_ON_CPU = False


def use_compile(cfg, t: torch.Tensor) -> bool:
    """Whether ``cfg.compile`` applies to work on ``t``'s device (CUDA, or the CPU in tests)."""
    return bool(cfg.compile) and (t.is_cuda or COMPILE_ON_CPU)


def maybe_compile(fn, use_compile: bool):
    """``fn`` or its torch.compile'd version (CUDA only; eager if compilation fails, also later
    at the first call, where torch.compile reports most errors)."""
    if not use_compile:
        return fn
    if fn not in _COMPILED:
        try:
            compiled = torch.compile(fn, dynamic=True)
        except Exception:  # noqa: BLE001 - any compile failure falls back to eager
            compiled = fn

        def call(*args, _c=compiled):
            if _COMPILED.get(("failed", fn)):
                return fn(*args)
            try:
                return _c(*args)
            except Exception as e:  # noqa: BLE001
                _COMPILED[("failed", fn)] = True
                warnings.warn(f"torch.compile of {fn.__name__} failed, using eager: {e!r:.200}")
                return fn(*args)

        _COMPILED[fn] = call
    return _COMPILED[fn]
