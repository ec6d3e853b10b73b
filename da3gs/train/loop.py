"""The training loop: composes config, network, optimizer, EMA, data, steps, evaluation,
logging and checkpoints. ``train(cfg)`` runs (or resumes) one run; ``evaluate_only`` measures a
checkpoint or an initialisation on the held-out sets.

Resume is exact on the CPU: weights, EMA, optimizer state, counters, the RNG states of torch,
numpy and python, and the data stream position (the source's own ``state_dict`` when it has
one, else the number of batches drawn, replayed) all come back from the checkpoint.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from da3gs.errors import Da3gsError
from da3gs.data.sources import make_train_source
from da3gs.train.checkpoint import (RUN_MARKER, RunLock, latest_checkpoint, load_checkpoint,
                                    load_weights, newest_loadable_checkpoint, prepare_run_dir,
                                    rng_state, save_checkpoint, set_rng_state)
from da3gs.train.config import ConfigError, TrainConfig, save_config, to_dict
from da3gs.train.dist import (DistInfo, all_reduce_, barrier, broadcast_object, cleanup,
                              full_state_dict, gather_objects, init_distributed,
                              mean_over_ranks, wrap)
from da3gs.train.ema import EMA
from da3gs.train.logging import RunLogger, depth_grid
from da3gs.train.graphs import CaptureError, GraphedStep
from da3gs.train.objectives import make_objective, take
from da3gs.train.optim import build_optimizer, lr_at, optimizer_state, set_lr
from da3gs.train.step import StepModule, apply_teacher, batch_to_device, train_step


class TrainingDiverged(Da3gsError):
    """Too many non-finite losses in a row; the last good checkpoint is kept."""


@dataclass
class Counters:
    """step: optimizer updates done; batches: batches drawn from the source (incl. skipped);
    bad_in_row / bad_total: non-finite steps; images: images (views) of the updates done, over
    every rank (0 at a resume of a checkpoint written before it was counted)."""

    step: int = 0
    batches: int = 0
    bad_in_row: int = 0
    bad_total: int = 0
    images: int = 0


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    reason: str  # "done" | "time_limit"
    checkpoint: Path | None
    bad_total: int
    last_metrics: dict = field(default_factory=dict)


def configure_backends(device: torch.device) -> None:
    """Process-wide settings for training on ``device``: cuDNN autotuning off (training draws
    many shapes; autotuning each new one costs more than it gains), cuDNN attention off (it
    builds an execution plan per new shape: 19 ms of host time per call measured on an H200
    with torch 2.11, a third of a compact step's host time; SDPA then takes the flash or
    memory-efficient kernels) and, before CUDA's first allocation, the expandable-segments
    allocator (less fragmentation across shapes; a ``PYTORCH_CUDA_ALLOC_CONF`` already set
    wins)."""
    if device.type != "cuda":
        return
    import os

    if not torch.cuda.is_initialized():
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.enable_cudnn_sdp(False)


def graphs_enabled(cfg: TrainConfig, info: DistInfo, device: torch.device,
                   objective=None) -> bool:
    """Whether the run's steps are CUDA graphs (``run.graphs``; :mod:`da3gs.train.graphs`) with
    ``objective`` (default: the config's, in its capturable form when it has one). ``on`` where
    they cannot apply is a :class:`ConfigError` naming why; ``auto`` falls back."""
    mode = str(cfg.run.graphs).lower()
    if mode in ("off", "false"):
        return False
    objective = objective if objective is not None else make_objective(cfg, mixed=True)
    why = None
    if device.type != "cuda":
        why = "CUDA graphs need a CUDA device"
    elif info.enabled:
        why = "several processes (DDP/FSDP) keep the eager step"
    elif getattr(objective, "capture_fields", None) is None:
        why = getattr(objective, "not_capturable", "this objective cannot be captured")
    elif cfg.model.grad_checkpointing:
        why = "model.grad_checkpointing saves RNG states, which a capture cannot"
    if why and mode in ("on", "true"):
        raise ConfigError(f"run.graphs=on: {why}")
    return why is None


def seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def preserved_rng():
    """Run a block (evaluation, image logging) without disturbing the training RNG streams."""
    st = rng_state()
    try:
        yield
    finally:
        set_rng_state(st)


def init_source(src: str) -> str:
    """``model.init`` as a ``load_model`` source: a da3gs run folder means its newest complete
    checkpoint (a warm start from a run that is still going, e.g. a campaign stretch)."""
    p = Path(src).expanduser()
    if (p / RUN_MARKER).is_file():
        ck = latest_checkpoint(p)
        if ck is None:
            raise ConfigError(f"model.init {src!r}: a run folder without a complete checkpoint")
        return str(ck)
    return src


def build_network(cfg: TrainConfig, device: torch.device, objective=None) -> nn.Module:
    """The network: ``model.init`` loaded with ``load_model`` (its preset must match
    ``model.preset``; a run folder: its newest checkpoint), else a random one of
    ``model.preset`` (seeded by ``run.seed``), made ready by the stage's objective
    (``objective.prepare``: which parameters train). A warm start keeps every loaded tensor,
    the GS head included (stage 1 freezes it; stage 2 trains it, re-initialising its output
    biases only with ``stage2.init_head``)."""
    from da3gs.models.net import build_net
    from da3gs.models.presets import get_preset

    try:
        preset = get_preset(cfg.model.preset)
    except ValueError as e:
        raise ConfigError(f"model.preset: {e}") from None
    objective = objective if objective is not None else make_objective(cfg)
    seed_all(cfg.run.seed)
    if cfg.model.init:
        from da3gs.models.loading import load_model

        model = load_model(init_source(cfg.model.init), device="cpu")
        net = model.net
        net.gs_geometry = model.gs_geometry  # "official" for the official GS weights
        net = objective.adapt_loaded(net, preset, cfg)
        if net.preset.name != preset.name:
            raise ConfigError(f"model.init {cfg.model.init!r} is preset {net.preset.name!r}, but "
                              f"model.preset is {preset.name!r}; set model.preset={net.preset.name}")
    else:
        net = build_net(preset, head_chunk=cfg.model.head_chunk)
    if objective.needs_cameras and not net.has_cameras:
        raise ConfigError(f"{objective.stage} needs an any-view preset; {preset.name!r} is "
                          "monocular")
    for m in net.modules():
        if hasattr(m, "grad_checkpointing"):
            m.grad_checkpointing = cfg.model.grad_checkpointing
    try:
        return objective.prepare(net.to(device), cfg)
    except ConfigError:
        raise
    except Da3gsError as e:  # e.g. stage 2 on a preset without a GS head
        raise ConfigError(f"model.preset: {e}") from None


def _eval_all(evaluator, net: nn.Module, objective, dev: torch.device) -> dict:
    """The evaluator's depth / pose numbers and the objective's own held-out metrics (stage 2:
    novel-view PSNR / SSIM / LPIPS of held-out target views in both pose modes)."""
    res = evaluator.run(net)
    res.update(objective.extra_metrics(net, evaluator.sets, dev))
    return res


def load_teacher(source: str, device: torch.device) -> nn.Module:
    from da3gs.models.loading import load_model

    t = load_model(source, device=device).net.eval()
    t.requires_grad_(False)
    return t


def run_dir_of(cfg: TrainConfig) -> Path:
    return Path(cfg.run.out or f"runs/{cfg.name or 'run'}")


def _restore_data(source, counters: Counters, data_state) -> None:
    if data_state is not None and hasattr(source, "load_state_dict"):
        source.load_state_dict(data_state)
        return
    for _ in range(counters.batches):
        next(source)


def _log_images(logger: RunLogger, net: nn.Module, batch, step: int, precision: str) -> None:
    from da3gs.train.evaluate import predict

    with preserved_rng():
        one = take(batch, torch.tensor([0]))
        out = predict(net, one, precision)
        logger.image(step, "train/depth", depth_grid(one.images[0], one.depth[0],
                                                      out["depth"][0], one.valid[0]))


def train(cfg: TrainConfig, resume: bool = False, source=None, objective=None) -> TrainResult:
    """Run (``resume``: continue, when the run folder has a checkpoint) one training run.
    Launch several processes with ``torchrun``; each reads RANK/WORLD_SIZE/LOCAL_RANK.

    ``source``: ``source(data_cfg, rank, world_size, device) -> iterator of ViewBatch``
    (default :func:`da3gs.data.sources.make_train_source`); ``objective``: the stage's loss
    object (default :func:`da3gs.train.objectives.make_objective` of the config, in its
    capturable form where the step runs as CUDA graphs)."""
    t0 = time.time()  # run.max_minutes counts from here (set-up included)
    info = init_distributed(cfg.run.device)
    try:
        return _train(cfg, info, resume, t0, source or make_train_source, objective)
    finally:
        cleanup()


def _start_run_dir(run_dir: Path, resume: bool, is_main: bool) -> tuple[Path | None, tuple | None,
                                                                         RunLock | None]:
    """Rank 0: lock the run folder (:class:`RunLock`), then choose the checkpoint to resume
    from (the newest that loads; damaged newer ones are reported and kept) and prepare the
    folder. Other ranks: the checkpoint rank 0 chose, after the barrier. Returns
    ``(checkpoint, its loaded contents or None, lock)``."""
    lock = None
    notes: list[str] = []
    found = None
    if is_main:
        if (run_dir / RUN_MARKER).is_file():  # an existing run folder: lock before reading it
            lock = RunLock(run_dir).acquire()
        if resume:
            found = newest_loadable_checkpoint(run_dir, note=notes.append)
        prepare_run_dir(run_dir, resume=found is not None)
        if lock is None:
            lock = RunLock(run_dir).acquire()
    for n in notes:
        print(n, flush=True)
    ckpt = broadcast_object(str(found[0]) if found else None)  # rank 0's choice everywhere
    return (Path(ckpt) if ckpt else None), (found[1] if found else None), lock


def _train(cfg: TrainConfig, info: DistInfo, resume: bool, t0: float, make_source,
           objective) -> TrainResult:
    run_dir, dev = run_dir_of(cfg), info.device
    configure_backends(dev)
    if objective is None:
        objective = make_objective(cfg, mixed=graphs_enabled(cfg, info, dev))
    ckpt, loaded, lock = _start_run_dir(run_dir, resume, info.is_main)
    try:
        return _train_locked(cfg, info, t0, run_dir, dev, ckpt, loaded, make_source, objective)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(cfg: TrainConfig, info: DistInfo, t0: float, run_dir: Path,
                  dev: torch.device, ckpt: Path | None, loaded: tuple | None, make_source,
                  objective) -> TrainResult:
    if info.is_main:
        save_config(cfg, run_dir / ("config.yaml" if ckpt is None else "config.resumed.yaml"))
    logger = RunLogger(run_dir, info.is_main, cfg.run.tensorboard, cfg.run.progress)
    net = build_network(cfg, dev, objective)
    fsdp = info.enabled and cfg.run.parallel == "fsdp"
    if fsdp and cfg.optim.ema_decay > 0:
        logger.message("run.parallel=fsdp: EMA is off (sharded weights); resume is not exact")
    ema = EMA(net, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 and not fsdp else None
    graphed = graphs_enabled(cfg, info, dev, objective)
    module = StepModule(net, objective)
    counters, rank_state = Counters(), None
    opt_state = None
    if ckpt is not None:
        raw, ema_w, st = loaded if loaded is not None else load_checkpoint(ckpt)
        load_weights(net, raw, str(ckpt))
        if ema is not None:
            ema.load_state_dict(ema_w)
        counters = Counters(**st["counters"])
        opt_state = st["optimizer"]
        ranks = st["ranks"]
        if len(ranks) != info.world_size:
            logger.message(f"resume: {len(ranks)} ranks saved, {info.world_size} running; "
                           "each rank re-seeds its RNG (not bit-identical)")
        rank_state = ranks[info.rank] if info.rank < len(ranks) else None
    wrapped = wrap(module, info, cfg.run.parallel)
    opt = build_optimizer(net, cfg.optim, capturable=graphed)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    params = [p for p in net.parameters() if p.requires_grad]
    gstep = None
    if graphed:
        gstep = GraphedStep(module, params, opt, ema, cfg.optim.grad_clip)
        gstep.reserve(cfg.data.shape_set())
        gstep.set_counters(counters.bad_in_row, counters.bad_total)
        logger.message("run.graphs: each batch shape's step is captured once as a CUDA graph "
                       "and replayed")
    seed_all(cfg.run.seed + 7919 * (info.rank + 1))
    source = iter(make_source(cfg.data, info.rank, info.world_size, dev))
    if ckpt is not None:
        _restore_data(source, counters, rank_state.get("data") if rank_state else None)
        if rank_state is not None:
            set_rng_state(rank_state["rng"])
        logger.message(f"resumed from {ckpt} at step {counters.step}")
    teacher = load_teacher(cfg.teacher, dev) if cfg.teacher else None
    evaluator = None
    total = cfg.schedule.steps
    last_ckpt, last_metrics, reason = ckpt, {}, "done"
    win_t, win_imgs, step_time = time.time(), 0, 0.0

    def stop_if_diverged(at: str) -> None:
        """Stop (keeping the last good checkpoint) after ``run.max_bad_steps`` non-finite
        steps in a row."""
        if counters.bad_in_row >= cfg.run.max_bad_steps:
            kept = latest_checkpoint(run_dir)
            logger.close()
            raise TrainingDiverged(
                f"{counters.bad_in_row} non-finite steps in a row {at} step {counters.step}; "
                f"stopped; last good checkpoint: {kept or 'none'}")

    def sync_bad() -> None:
        """The graphed step's non-finite counters into ``counters`` (one host read)."""
        if gstep is None:
            return
        counters.bad_in_row, counters.bad_total = gstep.read()
        stop_if_diverged("by")

    def checkpoint_now() -> Path | None:
        ranks = gather_objects({"rng": rng_state(), "data": source.state_dict()
                                if hasattr(source, "state_dict") else None})
        weights = full_state_dict(wrapped, net)
        path = None
        if info.is_main:
            state = {"optimizer": optimizer_state(opt), "counters": vars(counters).copy(),
                     "ranks": ranks, "config": to_dict(cfg)}
            path = save_checkpoint(run_dir, counters.step, net.preset.name, weights,
                                   ema.full_state(net) if ema is not None else None, state,
                                   cfg.run.keep_checkpoints,
                                   gs_geometry=getattr(net, "gs_geometry", "da3gs"))
        barrier()
        return path

    def run_eval() -> dict:
        nonlocal evaluator
        res = {}
        if info.is_main:
            from da3gs.train.evaluate import Evaluator

            with preserved_rng():
                if evaluator is None:
                    evaluator = Evaluator(cfg.eval, dev, cfg.run.precision)
                if ema is not None:
                    with ema.swapped_in(net):
                        res = _eval_all(evaluator, net, objective, dev)
                else:
                    res = _eval_all(evaluator, net, objective, dev)
            logger.scalars(counters.step, res, "eval")
        barrier()
        return res

    while counters.step < total:
        batch = next(source)
        counters.batches += 1
        batch = batch_to_device(batch, dev)
        if teacher is not None and counters.step >= cfg.teacher_after_step:
            batch = apply_teacher(teacher, batch, cfg.run.precision)
        lr = lr_at(counters.step, cfg.optim, cfg.schedule)
        set_lr(opt, lr)
        ts = time.time()
        if gstep is not None:  # skips are counted on the device, read when logging
            try:
                res = gstep.step(batch, counters.step)
            except CaptureError as e:
                if str(cfg.run.graphs).lower() in ("on", "true"):
                    raise
                sync_bad()
                gstep.release()
                gstep = None
                logger.message(f"run.graphs=auto: {e}; continuing with the eager step")
        if gstep is None:
            res = train_step(wrapped, params, opt, batch, cfg.optim.grad_clip)
        if gstep is None and res.skipped:
            counters.bad_in_row += 1
            counters.bad_total += 1
            logger.scalars(counters.step, {"loss": float(res.loss), "bad_in_row": counters.bad_in_row,
                                           "bad_total": counters.bad_total}, "skipped")
            stop_if_diverged("at")
            continue
        counters.step += 1
        if gstep is None:
            counters.bad_in_row = 0
            if ema is not None:
                ema.update(net, counters.step)
        step_time = 0.9 * step_time + 0.1 * (time.time() - ts) if step_time else time.time() - ts
        n_imgs = batch.images.shape[0] * batch.images.shape[1] * info.world_size
        win_imgs += n_imgs
        counters.images += n_imgs
        s = counters.step
        if s % cfg.run.log_every == 0 or s == total:  # the only step that reads the values
            sync_bad()
            vals = res.floats()
            grad_norm = vals.pop("grad_norm")
            vals = mean_over_ranks(vals, dev)
            ips = win_imgs / max(1e-9, time.time() - win_t)
            vals.update(lr=lr, grad_norm=grad_norm, images_per_s=ips,
                        bad_total=counters.bad_total, images_seen=counters.images,
                        elapsed_s=round(time.time() - t0, 1))
            logger.scalars(s, vals, "train")
            logger.progress(s, total, ips, f"loss {vals['loss']:.4f} lr {lr:.2e}")
            win_t, win_imgs = time.time(), 0
        if info.is_main and cfg.run.image_every and s % cfg.run.image_every == 0:
            _log_images(logger, net, batch, s, cfg.run.precision)
        if cfg.eval.every and s % cfg.eval.every == 0:
            last_metrics = run_eval()
        stop = False
        if cfg.run.max_minutes > 0:
            left = cfg.run.max_minutes * 60 - (time.time() - t0)
            stop = left < max(20.0, 5 * step_time) and s < total
            if info.enabled:  # every rank stops at the same step (one sync, only with a limit)
                flag = torch.tensor([float(stop)], device=dev)
                stop = bool(all_reduce_(flag, "max").item() > 0)
        if s % cfg.run.ckpt_every == 0 or s == total or stop:
            sync_bad()
            last_ckpt = checkpoint_now()
        if stop:
            reason = "time_limit"
            logger.message(f"time limit: stopped at step {s} with a checkpoint; resume with "
                           "--resume")
            break
    if hasattr(source, "close"):  # a Prefetcher's thread
        source.close()
    if reason == "done" and (not cfg.eval.every or counters.step % cfg.eval.every):
        last_metrics = run_eval()
    logger.close()
    return TrainResult(run_dir, counters.step, reason, last_ckpt, counters.bad_total,
                       last_metrics)


def evaluate_only(cfg: TrainConfig, source: str | None = None) -> dict[str, float]:
    """Held-out metrics of ``source`` (any load_model source: a checkpoint folder, an official
    model; or a run folder: its newest checkpoint) or, when None, of the run's initialisation
    (``model.init``, else the random network of ``model.preset`` seeded by ``run.seed``)."""
    info = init_distributed(cfg.run.device)
    try:
        if source:
            from da3gs.models.loading import load_model

            run_ckpt = latest_checkpoint(Path(source))
            if (Path(source) / ".da3gs_run").is_file() and run_ckpt is not None:
                source = str(run_ckpt)  # a run folder: its newest checkpoint
            net = load_model(source, device=info.device).net
        else:
            net = build_network(cfg, info.device)
        from da3gs.train.evaluate import Evaluator

        ev = Evaluator(cfg.eval, info.device, cfg.run.precision)
        return _eval_all(ev, net, make_objective(cfg), info.device)
    finally:
        cleanup()
