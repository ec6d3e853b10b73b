"""Training data streams and held-out evaluation sets, as the trainer consumes them.

- :func:`make_train_source` ``(cfg, rank, world_size, device) -> Iterator[ViewBatch]``: an
  endless stream, :class:`ProceduralSource` for ``cfg.source == "procedural"``, else
  :class:`SceneSource` over real scene folders. Both are deterministic given ``cfg.seed``
  and the rank, give every rank a different stream, draw the batch shape ``(V, H x W, B)``
  identically on every rank (same token count per step everywhere), and carry
  ``state_dict`` / ``load_state_dict`` (a position) so a resumed run continues the stream.
- :func:`make_eval_sets` ``(cfg: EvalDataConfig, device) -> dict[str, list[ViewBatch]]``:
  fixed procedural scenes (seeds ``EVAL_SEED_BASE + i``, never used in training) and real
  scenes, without augmentation or pose conditioning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from .augment import augment_batch
from .batch import ViewBatch
from .config import EVAL_SEED_BASE, DataConfig, EvalDataConfig, mix_seed
from .crop import PATCH
from .multiview import (
    GroupedBatchSampler,
    MultiViewDataset,
    assemble_sample,
    load_scene_entries,
    to_first_frame,
)
from .overlap import select_views
from .prefetch import Prefetcher

__all__ = ["ProceduralSource", "SceneSource", "make_eval_sets", "make_generator", "make_train_source"]

log = logging.getLogger(__name__)


def make_generator(procedural: dict, device):
    """``ProceduralGenerator(ProceduralConfig(**procedural), device)`` (YAML lists become tuples)."""
    from .procedural import ProceduralConfig, ProceduralGenerator

    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(procedural or {}).items()}
    return ProceduralGenerator(ProceduralConfig(**kw), device)


class ProceduralSource:
    """Endless :class:`ViewBatch` stream from the procedural generator.

    Step ``n``: ``(V, (H, W), B)`` drawn from ``(seed, n)`` (the same on every rank; ``B``
    keeps the token count about constant, see :meth:`DataConfig.samples_for`); the scenes
    from ``generator.sample(B, V, H, W, seed=mix_seed(seed, rank, n, ...))``, a seed in
    ``[0, 2**31)``; photometric augmentation and ``pose_conditioned`` (probability
    ``pose_cond_prob`` per sample) from ``(seed, rank, n)``; poses in view 0's frame when
    ``world_frame == "first"``.

    Args:
        cfg: the data settings. rank, world_size: this process's place. device: where the
            batches are made. generator: an object with the generator's ``sample`` method
            (default: built from ``cfg.procedural``).
    """

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, device="cpu", generator=None):
        self.cfg, self.rank, self.world_size = cfg, int(rank), int(world_size)
        self.device = torch.device(device)
        self.generator = generator if generator is not None else make_generator(cfg.procedural, self.device)
        self.step = 0

    def __iter__(self) -> ProceduralSource:
        return self

    def shape(self, step: int) -> tuple[int, tuple[int, int], int]:
        """``(V, (H, W), B)`` of step ``step``."""
        return self.cfg.draw_shape(np.random.default_rng(mix_seed(self.cfg.seed, step, 0x5AA9)))

    def __next__(self) -> ViewBatch:
        cfg, n = self.cfg, self.step
        V, (H, W), B = self.shape(n)
        seed = mix_seed(cfg.seed, self.rank, n, 0x9E4)
        b = self.generator.sample(B, V, H, W, seed=seed)
        b = augment_batch(b, cfg.aug, seed=mix_seed(cfg.seed, self.rank, n, 0xA06))
        u = np.random.default_rng(mix_seed(cfg.seed, self.rank, n, 0x90C)).uniform(size=B)
        b.pose_conditioned = torch.from_numpy(u < cfg.pose_cond_prob)  # on the CPU (ViewBatch)
        if cfg.world_frame == "first":
            b.c2w = to_first_frame(b.c2w)
        if b.scene_ids is None:
            b.scene_ids = [f"procedural/{seed}/{i}" for i in range(B)]
        self.step += 1
        return b

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class SceneSource:
    """Endless :class:`ViewBatch` stream over real scenes: a :class:`MultiViewDataset` read
    through a ``DataLoader`` with a :class:`GroupedBatchSampler` (this rank's shard), epoch
    after epoch (``set_epoch``), batches moved to ``device``.

    Attributes:
        dataset: the dataset (``dataset.skipped``: scenes that could not be read).
        epoch, batch: position in the stream (``state_dict``).
    """

    def __init__(self, cfg: DataConfig, rank: int = 0, world_size: int = 1, device="cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.dataset = MultiViewDataset(cfg.source, cfg)
        self.sampler = GroupedBatchSampler(len(self.dataset), cfg, num_replicas=world_size, rank=rank)
        self.epoch, self.batch = 0, 0
        self._it = None

    def __iter__(self) -> SceneSource:
        return self

    def _start(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip = self.batch
        w = int(self.cfg.num_workers)
        self._it = iter(DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=ViewBatch.collate,
                                   num_workers=w, persistent_workers=False,
                                   pin_memory=self.device.type == "cuda"))

    def __next__(self) -> ViewBatch:
        for _ in range(2):
            if self._it is None:
                self._start()
            try:
                b = next(self._it)
            except StopIteration:
                self.epoch, self.batch, self._it = self.epoch + 1, 0, None
                continue
            self.batch += 1
            return b.to(self.device, non_blocking=True, keep_flags=True)
        raise RuntimeError("SceneSource: an epoch yielded no batch")

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch, self._it = int(state["epoch"]), int(state["batch"]), None


def make_train_source(cfg: DataConfig, rank: int = 0, world_size: int = 1, device="cpu",
                      generator=None) -> Iterator[ViewBatch]:
    """The trainer's data stream: :class:`ProceduralSource` when ``cfg.source ==
    "procedural"``, else :class:`SceneSource` over the scene list, made ``cfg.prefetch``
    batches ahead by a :class:`~da3gs.data.prefetch.Prefetcher` when ``device`` is CUDA.
    ``generator`` replaces the procedural generator (tests)."""
    if cfg.source == "procedural":
        src = ProceduralSource(cfg, rank, world_size, device, generator=generator)
    else:
        src = SceneSource(cfg, rank, world_size, device)
    if cfg.prefetch > 0 and torch.device(device).type == "cuda":
        return Prefetcher(src, cfg.prefetch, device)
    return src


def _real_hw(src_hw: tuple[int, int], longest: int) -> tuple[int, int]:
    h, w = src_hw
    s = longest / max(h, w)
    r = lambda x: max(PATCH, math.floor(x * s / PATCH + 0.5) * PATCH)
    return r(h), r(w)


def make_eval_sets(cfg: EvalDataConfig, device="cpu", generator=None) -> dict[str, list[ViewBatch]]:
    """Held-out evaluation batches, fixed by the config.

    Returns:
        ``{"procedural": [ViewBatch, ...]}`` (``cfg.scenes`` scenes in batches of
        ``cfg.batch_size``; scene ``i`` is ``sample(1, views, height, width, seed=
        EVAL_SEED_BASE + first_seed + i)``) and one ``"real/<name>": [ViewBatch]`` per readable
        real scene (``B = 1``, ``real_views`` views, longest side ``real_res``, centred crops,
        depth where the scene has it). No augmentation; ``pose_conditioned`` False; poses in
        view 0's frame. Unreadable real scenes are skipped with one warning.
    """
    device = torch.device(device)
    out: dict[str, list[ViewBatch]] = {}
    if cfg.scenes > 0:
        gen = generator if generator is not None else make_generator(cfg.procedural, device)
        items = []
        for i in range(cfg.scenes):
            b = gen.sample(1, cfg.views, cfg.height, cfg.width, seed=EVAL_SEED_BASE + cfg.first_seed + i)
            b.c2w = to_first_frame(b.c2w)
            b.pose_conditioned = torch.zeros(1, dtype=torch.bool, device=b.images.device)
            b.scene_ids = [f"eval/{EVAL_SEED_BASE + cfg.first_seed + i}"]
            items.append(b)
        out["procedural"] = [ViewBatch.collate(items[k:k + cfg.batch_size])
                             for k in range(0, len(items), cfg.batch_size)]
    scenes, bad = load_scene_entries(cfg.real)
    for name, scene in scenes:
        try:
            rng = np.random.default_rng(mix_seed(cfg.seed, 0xE7A1))
            if cfg.real_selection == "even" or len(scene) <= cfg.real_views:
                idx = np.linspace(0, len(scene) - 1, min(cfg.real_views, len(scene))).round().astype(int).tolist()
                idx += [idx[k % len(idx)] for k in range(cfg.real_views - len(idx))]
            else:
                depth_fn = (lambda i, s=scene: torch.from_numpy(s.load_depth(i))) if scene.depth_paths else None
                idx = select_views(scene.c2w, scene.K, scene.image_hw, cfg.real_views, rng,
                                   depth_fn=depth_fn, near_far=scene.near_far)
            hw = _real_hw(scene.image_hw[idx[0]], cfg.real_res)
            key = f"real/{name}"
            while key in out:
                key += "_"
            out[key] = [assemble_sample(scene, idx, hw, rng=None, name=name).to(device)]
        except Exception as err:  # noqa: BLE001 - unreadable scenes are skipped
            bad.append(f"{name}: {' '.join(str(err).split()) or type(err).__name__}")
    if bad:
        log.warning("make_eval_sets: skipped %d real scenes that cannot be read:\n  %s", len(bad), "\n  ".join(bad))
    return out
