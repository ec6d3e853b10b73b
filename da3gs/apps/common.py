"""What the CLI jobs share: common flags, argument checks, device, model loading, timers.

Used by :mod:`da3gs.cli` and every job in :mod:`da3gs.apps` (render, eval ...); it imports
neither, so there are no import cycles between the CLI and the jobs. Output folders have their
own module, :mod:`da3gs.apps.outputs`.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import sys
import time

import torch

from da3gs.errors import Da3gsError
from da3gs.models.loading import FALLBACK
from da3gs.models.reference_view import STRATEGIES
from da3gs.nn.sparse_attention import CrossViewPattern
from da3gs._version import __version__

__all__ = ["DEFAULT_MODEL", "FALLBACK_MODEL", "MODEL_HELP", "REF_VIEWS", "DEFAULT_PROCESS_RES", "add_model_flags",
           "add_run_flags", "check_number", "Timer", "Progress", "resolve_device", "versions",
           "load_job_model", "sparse_attention_pattern", "add_refine_strategy_flags",
           "refine_strategy_kwargs"]

log = logging.getLogger("da3gs")

DEFAULT_MODEL = "depth-anything/DA3-GIANT-1.1"
"""The model the CLI uses when neither ``--model`` nor ``--checkpoint`` is given; also what
``load_model("giant")`` fetches (:data:`da3gs.models.loading.OFFICIAL_REPOS`)."""

FALLBACK_MODEL = FALLBACK
"""The bundled model (:data:`da3gs.models.loading.BUNDLED`) used when :data:`DEFAULT_MODEL`
is neither cached nor fetchable and the user named no model."""

MODEL_HELP = (
    "model: a Hugging Face repo id, a local folder (config.json + model.safetensors), "
    f"'{FALLBACK_MODEL}' (the small model bundled with da3gs, Apache-2.0) or 'random:PRESET' "
    f"for random weights (default: {DEFAULT_MODEL}, the published model with a Gaussian head; "
    "licence CC BY-NC 4.0, non-commercial; fetched once into the Hugging Face cache; offline "
    f"and not cached: '{FALLBACK_MODEL}', with a warning)")
REF_VIEWS = STRATEGIES  # the reference-view choices of --ref-view, one definition
DEFAULT_PROCESS_RES = 504
ANYVIEW_HINT = f"use an any-view model such as {DEFAULT_MODEL}"


def add_model_flags(p, process_res_help: str | None = None) -> None:
    """``--model | --checkpoint``, ``--process-res``, ``--ref-view``."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help=MODEL_HELP)
    src.add_argument("--checkpoint", help="a da3gs checkpoint (.safetensors file or folder)")
    p.add_argument("--process-res", type=int, default=DEFAULT_PROCESS_RES,
                   help=process_res_help or "longest image side fed to the network, a multiple "
                   f"of 14 (default {DEFAULT_PROCESS_RES})")
    p.add_argument("--ref-view", default="saddle_balanced", choices=list(REF_VIEWS),
                   help="reference-view strategy for pose-free input (default saddle_balanced)")
    add_sparse_attention_flags(p)
    p.add_argument("--exact", action="store_true",
                   help="the official numerics on CUDA (bf16 backbone, fp32 heads) instead of the "
                   "faster default with bf16 heads (docs/performance.md); no effect on the CPU")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer blocks and heads: faster forwards after a "
                   "one-time warm-up of tens of seconds, kept on disk for later runs "
                   "($DA3GS_COMPILE_CACHE, default ~/.cache/da3gs/compile); pays off for many "
                   "views or repeated runs")


SPARSE_DEFAULTS = CrossViewPattern()  # --keyframe-every / --window defaults


def add_sparse_attention_flags(p) -> None:
    """``--sparse-attention`` with ``--keyframe-every K | --num-keyframes M`` and ``--window W``
    (part of :func:`add_model_flags`)."""
    p.add_argument("--sparse-attention", action="store_true",
                   help="sparse cross-view attention for long sequences: each view attends to "
                   "the keyframe views and its temporal neighbours in the input order, not to "
                   "all views (default: full attention; docs/performance.md)")
    p.add_argument("--keyframe-every", type=int, default=None, metavar="K",
                   help="with --sparse-attention: every K-th view is a keyframe (0: only the "
                   f"reference view; default {SPARSE_DEFAULTS.keyframe_every})")
    p.add_argument("--num-keyframes", type=int, default=None, metavar="M",
                   help="with --sparse-attention: M keyframes evenly spaced over the views, "
                   "instead of --keyframe-every")
    p.add_argument("--window", type=int, default=None, metavar="W",
                   help="with --sparse-attention: temporal neighbours attended on each side "
                   f"(default {SPARSE_DEFAULTS.window})")


def sparse_attention_pattern(args) -> CrossViewPattern | None:
    """The :class:`CrossViewPattern` of the sparse-attention flags (None: full attention),
    checked; errors name the flag. Call it before reading files (and where the model loads)."""
    kf, nk, w = (getattr(args, n, None) for n in ("keyframe_every", "num_keyframes", "window"))
    if not getattr(args, "sparse_attention", False):
        for flag, v in (("--keyframe-every", kf), ("--num-keyframes", nk), ("--window", w)):
            if v is not None:
                raise Da3gsError(f"{flag}: only applies with --sparse-attention")
        return None
    if kf is not None and nk is not None:
        raise Da3gsError("--num-keyframes: give either --keyframe-every or --num-keyframes")
    check_number(kf, "--keyframe-every", 0, what="an integer >= 0 (0: only the reference view)")
    check_number(nk, "--num-keyframes", 1, what="a positive number of keyframes")
    check_number(w, "--window", 0, what="a number of neighbours >= 0")
    return CrossViewPattern(keyframe_every=SPARSE_DEFAULTS.keyframe_every if kf is None else kf,
                            window=SPARSE_DEFAULTS.window if w is None else w, num_keyframes=nk)


def add_run_flags(p, out_default: str, seed_help: str = "random seed (random: models)") -> None:
    """``--out``, ``--overwrite``, ``--device``, ``--seed``, ``-q``."""
    p.add_argument("--out", default=None, help=f"output folder (default: {out_default})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder (only one that da3gs wrote)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")


def check_number(value, flag: str, lo=None, hi=None, *, lo_open: bool = False,
                 what: str | None = None) -> None:
    """Raise :class:`Da3gsError` naming ``flag`` unless ``lo <= value <= hi`` (``lo < value``
    with ``lo_open``) and finite. ``None`` values are accepted (flag not given)."""
    if value is None:
        return
    bad = isinstance(value, float) and not math.isfinite(value)
    bad = bad or (lo is not None and (value <= lo if lo_open else value < lo))
    bad = bad or (hi is not None and value > hi)
    if bad:
        if what is None:
            if lo is not None and hi is not None:
                what = f"a value in {'(' if lo_open else '['}{lo}, {hi}]"
            elif lo is not None:
                what = f"a value {'>' if lo_open else '>='} {lo}"
            else:
                what = f"a value <= {hi}"
        raise Da3gsError(f"{flag}: expected {what}, got {value}")


class Timer:
    """``with timer("stage"): ...`` records wall-clock seconds per stage in ``timer.times``
    (CUDA synchronised at both ends when CUDA is available)."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer.times[name] = round(time.perf_counter() - self.t, 4)

        return _Stage()


class Progress:
    """What a command is doing, on stderr, for every step that can take more than a second; silent
    with ``-q``. One style for all commands: ``stage(text)`` prints ``da3gs COMMAND: text ...``
    before a long single step (model loading, inference, writing); ``bar(iterable, desc)`` is a
    tqdm bar for loops (video frames, scored views), removed when done."""

    def __init__(self, command: str, quiet: bool = False):
        self.command, self.quiet = command, bool(quiet)

    def stage(self, text: str) -> None:
        if not self.quiet:
            print(f"da3gs {self.command}: {text} ...", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """One line of advice, printed above a running bar without breaking it."""
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(f"da3gs {self.command}: {text}", file=sys.stderr)

    def bar(self, iterable, desc: str, total: int | None = None, unit: str = "it"):
        from tqdm import tqdm

        return tqdm(iterable, desc=f"da3gs {self.command}: {desc}", total=total, unit=unit,
                    disable=self.quiet, file=sys.stderr, leave=False, dynamic_ncols=True,
                    mininterval=0.5)

    def steps(self, total: int, desc: str):
        """A bar for an optimisation loop and its ``on_step(step, steps, loss)`` callback (as
        :func:`da3gs.train.refine.refine_gaussians` takes); close the bar when done."""
        bar = self.bar(None, desc, total=total, unit="step")

        def on_step(step: int, steps: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.5f}", refresh=False)
            bar.update(1)

        return bar, on_step


def add_refine_strategy_flags(p) -> None:
    """``--refine-strategy`` and ``--refine-strategy-opt`` (``render``, ``eval nvs``)."""
    p.add_argument("--refine-strategy", default="none",
                   help="densification during --refine-steps: none (default: the cloud is only "
                   "adjusted), default (gsplat's DefaultStrategy: 3DGS clone / split / prune) or "
                   "mcmc (gsplat's MCMCStrategy); schedule scaled to the number of steps "
                   "(da3gs.train.densify.strategy_defaults)")
    p.add_argument("--refine-strategy-opt", default=None, metavar="KEY=VALUE[,...]",
                   help="strategy parameters overriding the scaled defaults, e.g. "
                   "grow_grad2d=4e-4,reset_every=100")


def refine_strategy_kwargs(args) -> dict:
    """``strategy`` and ``strategy_options`` of ``refine_gaussians`` from the flags, checked
    before any work (one-line :class:`Da3gsError` naming the flag)."""
    from da3gs.train.refine import STRATEGIES as REFINE_STRATEGIES

    name = getattr(args, "refine_strategy", "none") or "none"
    text = getattr(args, "refine_strategy_opt", None)
    steps = int(getattr(args, "refine_steps", 0) or 0)
    if name not in REFINE_STRATEGIES:
        raise Da3gsError(f"--refine-strategy: expected one of {', '.join(REFINE_STRATEGIES)}, "
                         f"got {name!r}")
    if name == "none":
        if text:
            raise Da3gsError("--refine-strategy-opt needs --refine-strategy default or mcmc")
        return {"strategy": "none", "strategy_options": None}
    if steps <= 0:
        raise Da3gsError(f"--refine-strategy {name} needs --refine-steps K > 0")
    from da3gs.train.densify import make_strategy, parse_strategy_options

    opts = parse_strategy_options(text) or None
    try:
        make_strategy(name, steps, 1, torch.device("cpu"), opts)  # unknown names fail here
    except Da3gsError as e:
        raise Da3gsError(f"--refine-strategy-opt: {e}") from None
    return {"strategy": name, "strategy_options": opts}


def resolve_device(name: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ..."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise Da3gsError(f"--device: unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Da3gsError(f"--device {name}: CUDA is not available on this machine")
    return dev


def versions() -> dict[str, str]:
    """Versions of da3gs, torch, python and (when installed) gsplat, for output summaries.
    gsplat's comes from its package metadata: importing it belongs to the rendering backend."""
    from importlib.metadata import PackageNotFoundError, version

    v = {"da3gs": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        v["gsplat"] = version("gsplat")
    except PackageNotFoundError:
        pass
    return v


def load_job_model(args, device, need_gs: bool = False, job: str = "this command"):
    """The model of ``--checkpoint`` / ``--model`` (default :data:`DEFAULT_MODEL`), seeded with
    ``--seed``; checks it predicts cameras (and has a GS head when ``need_gs``).
    Returns ``(model, source)``."""
    from da3gs.models.loading import load_model, load_model_or_bundled

    source = args.checkpoint or args.model or DEFAULT_MODEL
    torch.manual_seed(args.seed)
    if args.checkpoint or args.model:  # the user named it: no silent substitute
        model = load_model(source, device=device)
    else:
        model, source = load_model_or_bundled(
            source, device, FALLBACK_MODEL, note=f"--model {FALLBACK_MODEL} selects it explicitly",
            loader=load_model)
    if not model.has_cameras:
        raise Da3gsError(f"model {source}: preset {model.preset.name} predicts depth only (no "
                         f"cameras); {ANYVIEW_HINT}")
    if need_gs and not model.has_gs_head:
        raise Da3gsError(f"model {source}: preset {model.preset.name} has no Gaussian head; {job} "
                         f"renders predicted Gaussians, so it needs a model with a GS head (e.g. "
                         f"{DEFAULT_MODEL}, or random:tiny-gs for tests)")
    pattern = sparse_attention_pattern(args)
    if pattern is not None:
        model.set_cross_view_attention(pattern)
        log.info("sparse cross-view attention: %s", pattern.describe())
    if getattr(args, "exact", False):
        model.auto_precision = "exact"
    if getattr(args, "compile", False):
        model.enable_compile()
    return model, str(source)


# --- context parallelism: one forward over several GPUs (--gpus N, or torchrun) ---------------

GPUS_HELP = ("one forward over N GPUs of this machine (context parallelism: each GPU holds 1/N of "
             "the views, the cross-view attention exchanges keys and values; any-view models). "
             "Under torchrun, the processes it starts (then --gpus, if given, must equal its "
             "world size)")


def add_gpus_flag(p) -> None:
    """``--gpus N`` (see :func:`run_job`)."""
    p.add_argument("--gpus", type=int, default=None, metavar="N", help=GPUS_HELP)


def _torchrun_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def check_gpus(args) -> int:
    """The number of processes of the job: ``--gpus`` or torchrun's ``WORLD_SIZE`` (1: one
    process). Raises Da3gsError (one line, before anything is loaded) for a value this machine
    cannot run: fewer CUDA devices than ``--gpus``, or ``--gpus`` against ``--device cpu``."""
    n, world = getattr(args, "gpus", None), _torchrun_world()
    if n is not None and n < 1:
        raise Da3gsError(f"--gpus: expected a positive number of GPUs, got {n}")
    if world > 1:
        if n is not None and n != world:
            raise Da3gsError(f"--gpus {n}: torchrun started {world} processes; pass --gpus {world} "
                             f"or leave --gpus out")
        return world
    if n is None or n == 1:
        return 1
    if args.device not in ("auto", "cuda"):
        raise Da3gsError(f"--gpus {n}: runs one process per CUDA device; drop --device "
                         f"{args.device}")
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < n:
        raise Da3gsError(f"--gpus {n}: this machine has {have} CUDA device"
                         f"{'' if have == 1 else 's'}")
    return n


def run_job(args, job):
    """Run ``job(args)`` (a CLI command's function) in one process, or context-parallel over
    :func:`check_gpus` processes: under torchrun this process is one of them; with ``--gpus N``
    it starts N (``torch.multiprocessing``, NCCL, one GPU each). Rank 0 runs the job; each of
    its inferences (:func:`job_infer`) is announced to the other ranks, which load the same
    model and join the forward with their share of the views, until rank 0 ends."""
    world = check_gpus(args)
    if world == 1:
        return job(args)
    if _torchrun_world() > 1:
        return _as_rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)),
                        "env://", args, job)
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        mp.spawn(_spawned, args=(world, f"tcp://127.0.0.1:{port}", args, job), nprocs=world)
    except mp.ProcessExitedException as e:  # the failing rank printed its error line
        sys.exit(e.exit_code if e.exit_code and e.exit_code > 0 else 1)
    return None


def _spawned(rank: int, world: int, init: str, args, job) -> None:
    try:
        _as_rank(rank, world, rank, init, args, job)
    except Da3gsError as e:
        print(f"da3gs {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


def _as_rank(rank: int, world: int, local_rank: int, init: str, args, job):
    import torch.distributed as dist

    if args.device != "cpu":  # CUDA: one device a rank, NCCL; --device cpu (tests): gloo
        if not torch.cuda.is_available():
            raise Da3gsError(f"rank {rank}: CUDA is not available; pass --device cpu for a "
                             f"CPU run (gloo)")
        torch.cuda.set_device(local_rank)
        args.device = f"cuda:{local_rank}"
    dist.init_process_group("gloo" if args.device == "cpu" else "nccl", init_method=init,
                            rank=rank, world_size=world)
    args.process_group = dist.group.WORLD
    try:
        if rank != 0:
            return _follow(args)
        try:
            return job(args)
        finally:
            dist.broadcast_object_list([None], src=0)  # the followers' stop
    finally:
        dist.destroy_process_group()


def job_infer(model, args, *a, **kw):
    """``model.infer(*a, **kw)`` for a job under :func:`run_job`: context-parallel (the call
    announced to the other ranks first) when the job runs over several processes."""
    group = getattr(args, "process_group", None)
    if group is None:
        return model.infer(*a, **kw)
    import torch.distributed as dist

    dist.broadcast_object_list([(a, kw)], src=0)
    return model.infer(*a, process_group=group, **kw)


def _follow(args) -> None:
    """Ranks > 0: join each inference rank 0 announces (:func:`job_infer`) until it stops."""
    import torch.distributed as dist

    model = None
    while True:
        msg = [None]
        dist.broadcast_object_list(msg, src=0)
        if msg[0] is None:
            return None
        a, kw = msg[0]
        if model is None:  # loaded at the first inference: none if rank 0 fails before
            model, _ = load_job_model(args, torch.device(args.device))
        model.infer(*a, process_group=args.process_group, **kw)
