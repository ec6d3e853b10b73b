"""Per-phase timing of the stage-1 training step, built exactly as the trainer builds it.

Usage:
    python scripts/bench_train.py [--config stage1-compact] [--steps 30] [--warmup 10]
        [--fixed-shape] [--no-compile-data] [--profile] [--device cuda|cpu] [--set KEY=VALUE ...]
    python scripts/bench_train.py --modes eager graphed [--pool 16] [--passes 3] [--e2e 20]
        [--all-buckets] [--config ...] [--set ...]

``--modes``: throughput of each step mode in one process, one after the other, from the same
seed: ``eager`` (today's step: ``train_step``, pose groups split on the host, EMA after) and
``graphed`` (:class:`~da3gs.train.graphs.GraphedStep`: the whole step replayed from one CUDA
graph per batch shape). A pool of ``--pool`` batches is drawn from the config's data stream
(its random view counts and aspect ratios) and kept on the device; one pass over it warms up
(graphed: captures each new shape; the first step's latency and the capture time are printed),
then ``--passes`` timed passes, synchronised only at the end of each pass: images/s is the
median pass. ``--e2e N`` also times N steps that draw each batch from the generator (the
trainer's loop without logging). ``--all-buckets`` (graphed) first captures one batch of
every shape the config can draw and reports the total capture time. A final table compares
the modes.

The network, EMA, :class:`~da3gs.train.step.StepModule`, optimizer and data source come from
the same functions :func:`da3gs.train.loop.train` uses (``build_network``, ``EMA``,
``build_optimizer``, ``make_train_source``, ``make_objective``), and one step runs the
trainer's code
(``train_step``, then ``ema.update``). ``torch.cuda.synchronize()`` separates the phases
(benchmark only; training never does this), so the total is a little slower than training.

Phases (medians over ``--steps`` steps after ``--warmup`` warm-up steps):
  data: ``next(source)`` (procedural generation + augmentation, on the device);
  h2d: ``batch.to(device)`` (a no-op copy when the source already made it there);
  prep: batch normalisation, the pose split, sub-batch gathering (inside the step module);
  forward: the network; loss: the stage-1 loss; backward; optim: clipping, the non-finite
  check (one host sync) and AdamW; ema: the EMA update; total: wall time of the whole step.

``--fixed-shape``: every step uses the shape of step 0 (``V``, ``H x W``, ``B``), instead of
the config's random views / aspect ratios. ``--no-compile-data``: ``data.procedural.compile
=false`` (``data.procedural: {compile: false, ...}`` in a config does the same for training).
``--profile``: one more profiled step (after the timed ones) with ``torch.profiler``;
prints the top 25 ops by device time (CUDA) and by CPU time, and the host-sync counts
(``aten::item``, ``aten::_local_scalar_dense``, ``aten::nonzero``, ...). On the CPU
``--config stage1-tiny`` runs in seconds (tests).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from da3gs.data.sources import make_train_source  # noqa: E402
from da3gs.train.config import load_config  # noqa: E402
from da3gs.train.ema import EMA  # noqa: E402
from da3gs.train.loop import build_network, configure_backends, seed_all  # noqa: E402
from da3gs.train.optim import build_optimizer, lr_at, set_lr  # noqa: E402
from da3gs.train.objectives import make_objective  # noqa: E402
from da3gs.train.step import StepModule, batch_to_device, train_step  # noqa: E402

PHASES = ("data", "h2d", "prep", "forward", "loss", "backward", "optim", "ema", "total")
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero",
            "aten::equal", "aten::masked_select", "aten::unique", "aten::tolist")


class Timer:
    """``mark(name)`` adds the (synchronised) time since the previous mark to phase ``name``."""

    def __init__(self, dev: torch.device, enabled: bool = True):
        self.dev, self.enabled = dev, enabled
        self.cur: dict[str, float] = defaultdict(float)
        self.t = 0.0

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def start(self) -> None:
        self.cur = defaultdict(float)
        if self.enabled:
            self.sync()
        self.t = self.t0 = time.perf_counter()

    def mark(self, name: str) -> None:
        if not self.enabled:
            return
        self.sync()
        now = time.perf_counter()
        self.cur[name] += now - self.t
        self.t = now

    def stop(self) -> dict[str, float]:
        self.sync()
        self.cur["total"] = time.perf_counter() - self.t0
        return dict(self.cur)


class FixedShape:
    """The source's stream, but every step drawn with the shape of step 0."""

    def __init__(self, source):
        self.source = source
        shape = source.shape(0)
        source.shape = lambda step: shape

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.source)


def build(args, graphed: bool = False):
    over = list(args.set)
    if args.device:
        over.append(f"run.device={args.device}")
    cfg = load_config(args.config, over)
    if args.no_compile_data:  # data.procedural is a free dict of ProceduralConfig fields
        cfg.data.procedural = {**dict(cfg.data.procedural or {}), "compile": False}
    dev = torch.device(cfg.run.device if cfg.run.device != "auto" else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    configure_backends(dev)
    objective = make_objective(cfg, mixed=graphed)
    net = build_network(cfg, dev, objective)
    ema = EMA(net, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    module = StepModule(net, objective)
    opt = build_optimizer(net, cfg.optim, capturable=graphed)
    params = [p for p in net.parameters() if p.requires_grad]
    seed_all(cfg.run.seed + 7919)
    source = iter(make_train_source(cfg.data, 0, 1, dev))
    if args.fixed_shape:
        if not hasattr(source, "shape"):
            raise SystemExit("--fixed-shape needs the procedural source")
        source = FixedShape(source)
    return cfg, dev, net, ema, module, opt, params, source


def instrument(module: StepModule, timer: Timer) -> None:
    """Phase marks around the network and the loss inside the objective."""
    obj = module.objective
    run_net, loss_fn = getattr(obj, "run_net", None), getattr(obj, "loss_fn", None)
    if run_net is not None:
        def timed_run_net(*a, **k):
            timer.mark("prep")
            out = run_net(*a, **k)
            timer.mark("forward")
            return out

        obj.run_net = timed_run_net
    if loss_fn is not None:
        def timed_loss(*a, **k):
            out = loss_fn(*a, **k)
            timer.mark("loss")
            return out

        obj.loss_fn = timed_loss


def one_step(step, cfg, dev, net, ema, module, opt, params, source, timer):
    timer.start()
    batch = next(source)
    timer.mark("data")
    batch = batch_to_device(batch, dev)
    timer.mark("h2d")
    set_lr(opt, lr_at(step, cfg.optim, cfg.schedule))
    res = train_step(module, params, opt, batch, cfg.optim.grad_clip, mark=timer.mark)
    if ema is not None and not res.skipped:
        ema.update(net, step + 1)
    timer.mark("ema")
    n_img = batch.images.shape[0] * batch.images.shape[1]
    return timer.stop(), n_img, tuple(batch.shape)


def profile_step(step, state, timer, dev, top: int = 25) -> None:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    timer.enabled = False
    with profile(activities=acts, record_shapes=False) as prof:
        one_step(step, *state, timer)
    timer.enabled = True
    ev = prof.key_averages()
    if dev.type == "cuda":
        print(f"\n== top {top} ops by CUDA time ==")
        print(ev.table(sort_by="cuda_time_total", row_limit=top, max_name_column_width=60))
    print(f"\n== top {top} ops by CPU time (self) ==")
    print(ev.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=60))
    counts = {e.key: e.count for e in ev}
    in_opt: dict[str, int] = defaultdict(int)
    for e in prof.events():  # sync ops inside optimizer.step (the CPU's foreach AdamW reads
        if e.name in SYNC_OPS:  # its step counters with .item(); the fused CUDA kernels do not)
            p = e.cpu_parent
            while p is not None and not p.name.startswith("Optimizer.step"):
                p = p.cpu_parent
            in_opt[e.name] += p is not None
    aten = sum(c for k, c in counts.items() if k.startswith("aten::"))
    print("== host syncs / op counts in one step (whole step: data generation included) ==")
    for k in SYNC_OPS:
        extra = f"   ({in_opt[k]} inside optimizer.step)" if in_opt[k] else ""
        print(f"  {k:28s} {counts.get(k, 0)}{extra}")
    print(f"  {'aten ops (all levels)':28s} {aten}")
    if dev.type == "cuda":
        launches = sum(c for k, c in counts.items() if k in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                "cudaLaunchKernelExC"))
        print(f"  {'kernel launches':28s} {launches}")


def _compile_stats() -> tuple[int, int]:
    """(compiled graphs, recompiles) so far, from dynamo's counters (0, 0 if unavailable)."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001
        return 0, 0
    return (int(counters["stats"].get("unique_graphs", 0)),
            int(sum(counters.get("recompiles", {}).values())))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_passes(step, pool: list, passes: int, dev: torch.device) -> float:
    """Median seconds of ``passes`` passes of ``step`` over ``pool``, each synchronised only
    at its end (shared with bench_stage2.py)."""
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        for b in pool:
            step(b)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput(mode: str, args) -> dict:
    """images/s of one step mode (see the module docstring, ``--modes``)."""
    graphed = mode == "graphed"
    t_build = time.perf_counter()
    cfg, dev, net, ema, module, opt, params, source = build(args, graphed=graphed)
    gstep = None
    if graphed:
        from da3gs.train.graphs import GraphedStep

        gstep = GraphedStep(module, params, opt, ema, cfg.optim.grad_clip)
        gstep.reserve(cfg.data.shape_set())
    print(f"[{mode}] built in {time.perf_counter() - t_build:.1f} s", flush=True)
    counter = [0]

    def step(batch):
        s = counter[0]
        set_lr(opt, lr_at(s, cfg.optim, cfg.schedule))
        if gstep is not None:
            gstep.step(batch, s)
        else:
            res = train_step(module, params, opt, batch, cfg.optim.grad_clip)
            if ema is not None and not res.skipped:
                ema.update(net, s + 1)
        counter[0] += 1

    row = {"mode": mode}
    if graphed and args.all_buckets:
        shapes = cfg.data.shape_set()
        _sync(dev)
        t0 = time.perf_counter()
        for V, (H, W), B in shapes:
            b = source.generator.sample(B, V, H, W, seed=counter[0])
            b.pose_conditioned = torch.rand(B) < cfg.data.pose_cond_prob
            step(batch_to_device(b, dev))
        _sync(dev)
        row["all_buckets_s"] = time.perf_counter() - t0
        print(f"[{mode}] every shape of the config: {len(shapes)} buckets stepped in "
              f"{row['all_buckets_s']:.1f} s ({gstep.captures} captures, "
              f"{gstep.capture_s:.1f} s capturing)", flush=True)
    t0 = time.perf_counter()
    pool = [batch_to_device(next(source), dev) for _ in range(args.pool)]
    _sync(dev)
    imgs = sum(b.images.shape[0] * b.images.shape[1] for b in pool)
    shapes = {tuple(b.shape) for b in pool}
    print(f"[{mode}] pool: {len(pool)} batches, {len(shapes)} shapes, {imgs} images, drawn in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    step(pool[0])
    _sync(dev)
    row["first_step_s"] = time.perf_counter() - t0
    for b in pool[1:]:
        step(b)
    _sync(dev)
    row["warm_pass_s"] = time.perf_counter() - t0
    if gstep is not None:
        row["captures"], row["capture_s"] = gstep.captures, gstep.capture_s
    print(f"[{mode}] first step {row['first_step_s']:.2f} s, warm-up pass "
          f"{row['warm_pass_s']:.1f} s" + (f" ({gstep.captures} graphs, {gstep.capture_s:.1f} s "
                                          "capturing)" if gstep else ""), flush=True)
    row["pass_s"] = time_passes(step, pool, args.passes, dev)
    row["images_per_s"] = imgs / row["pass_s"]
    row["images_per_step"] = imgs / len(pool)
    print(f"[{mode}] {args.passes} passes: median {row['pass_s']:.3f} s, "
          f"{row['images_per_s']:.0f} images/s ({row['images_per_step']:.0f} images/step)",
          flush=True)
    if args.profile and dev.type == "cuda":  # where a pass's device time goes (kernels
        from torch.profiler import ProfilerActivity, profile  # inside the graphs included)

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            time_passes(step, pool, 1, dev)
        print(f"\n== [{mode}] one pass, top 30 ops by CUDA time ==")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30,
                                        max_name_column_width=70))
    if args.e2e:
        n_img = 0
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(args.e2e):
            b = batch_to_device(next(source), dev)
            n_img += b.images.shape[0] * b.images.shape[1]
            step(b)
        _sync(dev)
        row["e2e_images_per_s"] = n_img / (time.perf_counter() - t0)
        print(f"[{mode}] with the generator: {row['e2e_images_per_s']:.0f} images/s over "
              f"{args.e2e} steps", flush=True)
    if dev.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        torch.cuda.reset_peak_memory_stats(dev)
    pool = gstep = source = module = net = opt = ema = params = None  # release (not del:
    # the step closure reads them)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def compare(args) -> None:
    rows = [throughput(m, args) for m in args.modes]
    base = rows[0]["images_per_s"]
    print(f"\n{'mode':8s} {'images/s':>9s} {'x':>6s} {'img/step':>8s} {'first step s':>12s} "
          f"{'warm-up s':>9s} {'graphs':>6s} {'e2e img/s':>9s} {'peak GiB':>8s}")
    for r in rows:
        print(f"{r['mode']:8s} {r['images_per_s']:9.0f} {r['images_per_s'] / base:6.2f} "
              f"{r['images_per_step']:8.0f} {r['first_step_s']:12.2f} {r['warm_pass_s']:9.1f} "
              f"{r.get('captures', 0):6d} {r.get('e2e_images_per_s', float('nan')):9.0f} "
              f"{r.get('peak_gib', float('nan')):8.2f}")
    for r in rows:
        if "all_buckets_s" in r:
            print(f"{r['mode']}: every bucket of the config captured and stepped in "
                  f"{r['all_buckets_s']:.1f} s")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="stage1-compact")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--fixed-shape", action="store_true")
    ap.add_argument("--no-compile-data", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--device", default=None, help="run.device override (cuda, cpu)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--modes", nargs="+", choices=["eager", "graphed"], default=None,
                    help="throughput of these step modes in one run (module docstring)")
    ap.add_argument("--pool", type=int, default=16, help="--modes: batches in the pool")
    ap.add_argument("--passes", type=int, default=3, help="--modes: timed passes over the pool")
    ap.add_argument("--e2e", type=int, default=0, help="--modes: steps timed with the generator")
    ap.add_argument("--all-buckets", action="store_true",
                    help="--modes graphed: capture every shape of the config first")
    args = ap.parse_args(argv)
    if args.modes:
        compare(args)
        return

    t_build = time.perf_counter()
    state = build(args)
    cfg, dev = state[0], state[1]
    timer = Timer(dev)
    instrument(state[4], timer)
    print(f"config {args.config}: device {dev}, precision {cfg.run.precision}, "
          f"params {sum(p.numel() for p in state[2].parameters()) / 1e6:.2f} M, "
          f"{'fixed shape' if args.fixed_shape else 'random shapes'}, data compile "
          f"{bool(dict(cfg.data.procedural or {}).get('compile', True))}"
          f"{'' if dev.type == 'cuda' else ' (CUDA only)'}, "
          f"built in {time.perf_counter() - t_build:.1f} s", flush=True)
    graphs0 = _compile_stats()
    rows, imgs, shapes = [], 0, set()
    t_w = time.perf_counter()
    for s in range(args.warmup + args.steps):
        ph, n, shape = one_step(s, *state, timer)
        if s == args.warmup - 1 or (args.warmup == 0 and s == 0):
            print(f"warm-up: {args.warmup} steps in {time.perf_counter() - t_w:.1f} s", flush=True)
        if s == args.warmup:
            graphs0 = _compile_stats()
        if s >= args.warmup:
            rows.append(ph)
            imgs += n
            shapes.add(shape)
    med = {p: statistics.median(r.get(p, 0.0) for r in rows) for p in PHASES}
    tot = sum(r["total"] for r in rows)
    print(f"\n{len(rows)} steps, {len(shapes)} shapes (B, V, H, W), "
          f"{imgs / len(rows):.1f} images/step")
    print(f"{'phase':10s} {'median ms':>10s} {'share':>7s}")
    for p in PHASES:
        print(f"{p:10s} {1e3 * med[p]:10.2f} {100 * med[p] / med['total']:6.1f}%")
    print(f"images/s: {imgs / tot:.1f} (mean over the timed steps, phases synchronised)")
    g1 = _compile_stats()
    print(f"torch.compile during the timed steps: {g1[0] - graphs0[0]} new graphs, "
          f"{g1[1] - graphs0[1]} recompiles (all steps: {g1[0]} graphs, {g1[1]} recompiles)")
    if dev.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")
    if args.profile:
        profile_step(args.warmup + args.steps, state, timer, dev)


if __name__ == "__main__":
    main()
