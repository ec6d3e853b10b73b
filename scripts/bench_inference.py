"""Network inference: da3gs against the official depth-anything-3 package, speed and accuracy, one run.

For each preset the official network is built with random weights (tests/official_ref.py
``build_official``), written as the release writes it (``save_official``: hub-mixin
safetensors + config.json) and loaded back by da3gs through ``load_model(folder)``, the path a
user's download takes; both networks then run on the same random 504 x 336 inputs
(``--height/--width``) for each view count.

Timed, median of --repeats after --warmup (CUDA-synchronised), with peak memory:

* ``official``: the official network under its inference precision (bf16 autocast on CUDA,
  heads in fp32), ``--official-max-views`` caps the view counts it runs (it grows
  quadratically);
* ``da3gs/<precision>`` for each of ``--precisions``, through the model's own precision option
  (``Da3gsModel._autocast``: ``bf16`` is the official numerics, i.e. the ``--exact`` path;
  a faster mode added there is measured by naming it here).

Accuracy (the bounds of issue 10), against the official network in fp32 (no autocast) on the same
input: depth and confidence relative error ``max |a - b| / max |b|`` <= 1e-2, camera rotation
within 0.1 degree and translation direction (camera centres, views whose centre is not at the
origin) within 0.2 degree. The official bf16 row shows what bf16 alone costs.

Errors are printed as ``depth / conf / rotation deg / direction deg``: ``official err`` is the
official network at its precision against itself in fp32 (what bf16 alone costs), ``da3gs <p>
err`` each da3gs mode against the official fp32 (with the verdict against the bounds), and the
last column da3gs against the official output at the same precision (0 up to kernel order: the
same numerics). The exit status is 1 when a da3gs mode misses a bound.

Prints a markdown table and writes --json. Runs on CPU with small sizes (the test does), on CUDA
for the real numbers.

Usage (H200):
  python scripts/bench_inference.py --presets small base large giant --views 1 8 32 128 \
      --official-max-views 128 --json inference.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOUNDS = {"depth": 1e-2, "depth_conf": 1e-2, "rot_deg": 0.1, "trans_dir_deg": 0.2}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time(fn, dev: torch.device, repeats: int, warmup: int) -> tuple[float, float | None]:
    for _ in range(warmup):
        fn()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for _ in range(repeats):
        _sync(dev)
        t = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    return statistics.median(times), peak


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))




def accuracy(out: dict, ref: dict) -> dict:
    """Errors of ``out`` against ``ref`` (network output dicts): depth/conf relative error,
    largest camera rotation difference and translation direction difference in degrees."""
    err = {k: _rel(out[k], ref[k]) for k in ("depth", "depth_conf", "raw_gs", "raw_gs_conf")
           if k in ref}
    if "extrinsics" in ref:
        a, b = out["extrinsics"][0].double(), ref["extrinsics"][0].double()  # (V, 3, 4) w2c
        Ra, Rb = a[:, :, :3], b[:, :, :3]
        # |Ra - Rb|_F = 2 sqrt(2) sin(angle / 2): stable for small angles (arccos of the trace is not)
        chord = (Ra - Rb).flatten(1).norm(dim=-1) / (2 * math.sqrt(2))
        err["rot_deg"] = float(torch.rad2deg(2 * torch.arcsin(chord.clamp(max=1.0))).max())
        Ca = -(Ra.transpose(1, 2) @ a[:, :, 3:])[..., 0]
        Cb = -(Rb.transpose(1, 2) @ b[:, :, 3:])[..., 0]
        nb = Cb.norm(dim=-1)
        ok = nb > 1e-3 * max(float(nb.max()), 1e-12)
        if bool(ok.any()):
            ang = torch.atan2(torch.linalg.cross(Ca[ok], Cb[ok]).norm(dim=-1), (Ca[ok] * Cb[ok]).sum(-1))
            err["trans_dir_deg"] = float(torch.rad2deg(ang).max())
    return err


def _passes(err: dict) -> bool:
    return all(err.get(k, 0.0) <= bound for k, bound in BOUNDS.items()
               if not (isinstance(err.get(k), float) and math.isnan(err[k])))


_COMPILED: dict = {}


def _compiled(model):
    """A compiled copy of ``model`` (``enable_compile``), made once per preset."""
    import copy

    if id(model) not in _COMPILED:
        _COMPILED[id(model)] = copy.deepcopy(model).enable_compile()
    return _COMPILED[id(model)]


def _official_autocast(dev: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


def run(args) -> list[dict]:
    from da3gs.models import load_model
    from da3gs.models.presets import get_preset
    from tests.official_ref import build_official, save_official

    dev = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for name in args.presets:
        preset = get_preset(name)
        gs = bool(args.gs and getattr(preset, "gs_head", False))
        t0 = time.perf_counter()
        off = build_official(preset.official_name, seed=0)
        with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
            folder = save_official(off, Path(tmp) / preset.official_name, preset.official_name)
            ours = load_model(folder, device=dev)
        off = off.to(dev).eval()
        print(f"# {name}: built, written as the release and loaded in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
        for V in args.views:
            x = torch.randn(1, V, 3, args.height, args.width, generator=torch.Generator().manual_seed(V)).to(dev)

            def off_fwd(precision):
                with torch.no_grad(), _official_autocast(dev, precision):
                    return off(x, None, None, export_feat_layers=[], infer_gs=gs)

            def ours_fwd(precision):
                base, compiled = precision.split("+")[0], precision.endswith("+compile")
                model = _compiled(ours) if compiled else ours
                model.net.set_output_device("cpu" if V > args.offload_views else None)
                autocast, fast = model._precision(base)
                with torch.no_grad(), autocast:
                    return model.net(x, infer_gs=gs, fast=fast)

            row = {"preset": name + (" + GS" if gs else ""), "views": V, "device": str(dev)}
            check = V <= args.accuracy_max_views
            ref = off_fwd("fp32") if check else None
            same = None  # the official output at its own precision
            if V <= args.official_max_views:
                same = off_fwd(args.official_precision) if check else None
                if check:
                    row["official_err"] = accuracy(same, ref)
                row["official_s"], row["official_peak_gib"] = _time(
                    lambda: off_fwd(args.official_precision), dev, args.repeats, args.warmup)
            exact_out = None
            for p in args.precisions:
                if p.endswith("+compile"):  # the first call compiles: timed on its own
                    _sync(dev)
                    t0 = time.perf_counter()
                    out = ours_fwd(p)
                    _sync(dev)
                    row[f"da3gs_{p}_first_call_s"] = time.perf_counter() - t0
                    del out
                if check:
                    out = ours_fwd(p)
                    if p == "exact":
                        exact_out = out
                    elif exact_out is not None:
                        row[f"da3gs_{p}_vs_exact"] = accuracy(out, exact_out)
                    row[f"da3gs_{p}_err"] = accuracy(out, ref)
                    row[f"da3gs_{p}_ok"] = _passes(row[f"da3gs_{p}_err"])
                    if same is not None and p in ("exact", args.official_precision):
                        row[f"da3gs_{p}_vs_official_same_precision"] = accuracy(out, same)
                    if p != "exact":
                        del out
                row[f"da3gs_{p}_s"], row[f"da3gs_{p}_peak_gib"] = _time(
                    lambda: ours_fwd(p), dev, args.repeats, args.warmup)
                bb = getattr(ours.net, "backbone", None)
                if args.cache_ablation and bb is not None:  # the same with the per-size caches off
                    bb.use_cache = False
                    try:
                        row[f"da3gs_{p}_nocache_s"], _ = _time(lambda: ours_fwd(p), dev, args.repeats, args.warmup)
                    finally:
                        bb.use_cache = True
            del ref, same, exact_out
            rows.append(row)
            print(_row_md(row, args.precisions), flush=True)
        off = ours = None  # free the networks (not del: the closures above read them)
        _COMPILED.clear()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _fmt_err(err: dict | None) -> str:
    if not err:
        return "-"
    return (f"{err.get('depth', float('nan')):.1e} / {err.get('depth_conf', float('nan')):.1e} / "
            f"{err.get('rot_deg', float('nan')):.3f} / {err.get('trans_dir_deg', float('nan')):.3f}")


def _header(precisions) -> str:
    cols = ["preset", "views", "official s", "official images/s"]
    for p in precisions:
        cols += [f"da3gs {p} s", f"da3gs {p} images/s", f"speed-up {p}"]
    cols += ["peak GiB official / " + " / ".join(precisions), "official err"]
    cols += [f"da3gs {p} err, within bounds" for p in precisions]
    cols += ["da3gs vs official, same precision"]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def _row_md(row: dict, precisions) -> str:
    V = row["views"]
    o = row.get("official_s")
    cells = [row["preset"], str(V), f"{o:.4f}" if o else "-", f"{V / o:.1f}" if o else "-"]
    for p in precisions:
        s = row[f"da3gs_{p}_s"]
        cells += [f"{s:.4f}", f"{V / s:.1f}", f"{o / s:.2f}x" if o else "-"]
    peaks = [row.get("official_peak_gib")] + [row.get(f"da3gs_{p}_peak_gib") for p in precisions]
    cells.append(" / ".join("-" if m is None else f"{m:.1f}" for m in peaks))
    cells.append(_fmt_err(row.get("official_err")))
    for p in precisions:
        e = row.get(f"da3gs_{p}_err")
        cells.append(_fmt_err(e) + (", ok" if row.get(f"da3gs_{p}_ok") else (", FAIL" if e else "")))
    cells.append(" ".join(_fmt_err(row[k]) for k in row if k.endswith("_vs_official_same_precision")) or "-")
    vs_exact = [f"{p}: {_fmt_err(row[f'da3gs_{p}_vs_exact'])}" for p in precisions
                if f"da3gs_{p}_vs_exact" in row]
    if vs_exact:
        cells.append("vs exact " + "; ".join(vs_exact))
    first = [f"{p} {row[f'da3gs_{p}_first_call_s']:.1f}" for p in precisions
             if f"da3gs_{p}_first_call_s" in row]
    if first:
        cells.append("first call (compiles): " + ", ".join(first) + " s")
    nocache = [f"{p} {row[f'da3gs_{p}_nocache_s']:.4f}" for p in precisions if f"da3gs_{p}_nocache_s" in row]
    if nocache:
        cells.append("caches off: " + ", ".join(nocache) + " s")
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["small", "base", "large", "giant"])
    ap.add_argument("--views", nargs="+", type=int, default=[1, 8, 32, 128])
    ap.add_argument("--height", type=int, default=336)
    ap.add_argument("--width", type=int, default=504)
    ap.add_argument("--precisions", nargs="+", default=["bf16"],
                    help="da3gs precision modes timed (the model's precision option: exact (= bf16) "
                    "is the official numerics, fast the default bf16 heads; a '+compile' suffix "
                    "times a torch.compiled copy, its first call reported apart)")
    ap.add_argument("--official-precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--official-max-views", type=int, default=128,
                    help="skip the official timing above this many views")
    ap.add_argument("--accuracy-max-views", type=int, default=128,
                    help="skip the fp32 reference (and accuracy) above this many views")
    ap.add_argument("--offload-views", type=int, default=256,
                    help="above this many views da3gs keeps its outputs in host memory (as infer)")
    ap.add_argument("--gs", action="store_true", help="run the GS head too (presets that have one)")
    ap.add_argument("--cache-ablation", action="store_true",
                    help="also time da3gs with the backbone's position-embedding / RoPE caches off")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="write the rows (and the bounds) here")
    args = ap.parse_args(argv)
    dev_name = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
    print(f"{dev_name}, torch {torch.__version__}, {args.width}x{args.height}, median of {args.repeats} "
          f"after {args.warmup} warm-up; accuracy against the official network in fp32; bounds {BOUNDS}")
    print(_header(args.precisions), flush=True)
    rows = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev_name, "torch": torch.__version__,
                                               "bounds": BOUNDS, "args": vars(args), "rows": rows},
                                              indent=2) + "\n")
    failed = [r for r in rows for p in args.precisions if r.get(f"da3gs_{p}_ok") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
