"""Configuration of the training data stream (:class:`DataConfig`) and the held-out
evaluation data (:class:`EvalDataConfig`), plus the seed rules shared by the sources.

Seeds: every random draw of the data stream comes from :func:`mix_seed` of the config's
``seed`` and counters (epoch, step, rank, position), so a stream is reproducible. Training
procedural scenes use seeds in ``[0, 2**31)``; held-out procedural scenes use
``EVAL_SEED_BASE + i`` with ``EVAL_SEED_BASE = 2**31``, a disjoint range.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .augment import AugConfig
from .crop import PAPER_RESOLUTIONS, num_tokens, resolution_set

__all__ = ["EVAL_SEED_BASE", "DataConfig", "EvalDataConfig", "mix_seed"]

EVAL_SEED_BASE = 2**31


def mix_seed(*ints: int) -> int:
    """A well-mixed seed in ``[0, 2**31)`` from non-negative integers."""
    return int(np.random.SeedSequence([int(i) & 0xFFFFFFFFFFFFFFFF for i in ints]).generate_state(1)[0]) & 0x7FFFFFFF


@dataclass
class DataConfig:
    """The training data stream (built by :func:`da3gs.data.sources.make_train_source`).

    Fields:
      source: ``"procedural"`` (the generator) or a list of scene entries: a folder or camera
        file (any format :func:`da3gs.data.load_scene` reads; a glob such as ``data/*`` expands
        to the matching folders), or a dict ``{"path": ..., **reader_options}`` (e.g.
        ``{"path": "llff_fern", "factor": 8}``). Scenes that cannot be read are skipped and
        counted. Scenes without depth give ``valid = False`` everywhere: their samples
        supervise only cameras and rays.
      views: inclusive range ``(lo, hi)`` of views per sample, uniform (the paper: 2-18).
      view_set: the view counts drawn (uniformly) instead of every integer of ``views``, e.g.
        ``[2, 4, 8]``: fewer batch shapes (each is one CUDA graph of the training step);
        every entry must lie in ``views``. Empty: every integer of ``views``.
      base_resolution: the paper's resolutions (at 504) are scaled to this base.
      resolutions: ``(W, H)`` pairs at base 504 (the paper's list, see
        :data:`da3gs.data.crop.PAPER_RESOLUTIONS`); one is drawn uniformly per batch.
      batch_size: samples per step at the largest view count and the square base
        resolution; with ``constant_tokens`` other shapes get more samples.
      constant_tokens: keep the patch tokens per step about constant: a batch of V views of
        ``H x W`` gets ``max(1, batch_tokens // (V * H * W / 14**2))`` samples.
      batch_tokens: tokens per step; 0 means ``batch_size * views[1] * (base / 14) ** 2``.
      max_batch_size: cap on samples per step.
      zoom: ``(lo, hi)`` random zoom >= 1 beyond the smallest resize covering the crop
        (real scenes; the crop position is uniform).
      aug: photometric augmentation (images only, never depth or masks).
      pose_cond_prob: probability that a sample is pose-conditioned (the paper: 0.2).
      min_overlap: views of a real scene scoring below this overlap with the reference
        view are used only when too few score above it (:mod:`da3gs.data.overlap`).
      world_frame: ``"first"``: poses are expressed in the first (reference) view's camera
        frame (``c2w[:, 0]`` is the identity); ``"scene"``: the source's world frame.
      samples_per_scene: samples drawn from each real scene per epoch.
      num_workers: DataLoader worker processes for real scenes (0: in the main process).
      prefetch: on CUDA, batches made ahead of the step by a background thread on a side
        stream (:class:`da3gs.data.prefetch.Prefetcher`; same batches, same order); 0: made
        in line. Ignored on the CPU, where the thread would only compete for the cores.
      seed: seed of the whole stream (ranks derive their own).
      procedural: keyword arguments of
        :class:`da3gs.data.procedural.ProceduralConfig` (its ``seed`` is unused: the stream
        passes a seed to every ``sample`` call).
    """

    source: str | list = "procedural"
    views: tuple[int, int] = (2, 18)
    view_set: tuple = ()
    base_resolution: int = 504
    resolutions: tuple = PAPER_RESOLUTIONS
    batch_size: int = 1
    constant_tokens: bool = True
    batch_tokens: int = 0
    max_batch_size: int = 64
    zoom: tuple[float, float] = (1.0, 1.2)
    aug: AugConfig = field(default_factory=AugConfig)
    pose_cond_prob: float = 0.2
    min_overlap: float = 0.1
    world_frame: str = "first"
    samples_per_scene: int = 100
    num_workers: int = 0
    prefetch: int = 2
    seed: int = 0
    procedural: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.aug, dict):
            self.aug = AugConfig(**self.aug)
        self.views = tuple(int(v) for v in self.views)
        self.view_set = tuple(int(v) for v in self.view_set)
        self.resolutions = tuple(tuple(int(v) for v in wh) for wh in self.resolutions)
        self.zoom = tuple(float(v) for v in self.zoom)
        if isinstance(self.source, tuple):
            self.source = list(self.source)
        elif isinstance(self.source, str) and self.source != "procedural":
            self.source = [self.source]  # one scene folder or glob
        if len(self.views) != 2 or not 1 <= self.views[0] <= self.views[1]:
            raise ValueError(f"data.views: expected (lo, hi) with 1 <= lo <= hi, got {self.views}")
        if any(not self.views[0] <= v <= self.views[1] for v in self.view_set):
            raise ValueError(f"data.view_set: every entry must lie in data.views {self.views}, "
                             f"got {list(self.view_set)}")
        if len(self.zoom) != 2 or not 1.0 <= self.zoom[0] <= self.zoom[1]:
            raise ValueError(f"data.zoom: expected (lo, hi) with 1 <= lo <= hi, got {self.zoom}")
        if not 0.0 <= self.pose_cond_prob <= 1.0:
            raise ValueError(f"data.pose_cond_prob: expected a probability, got {self.pose_cond_prob}")
        if self.world_frame not in ("first", "scene"):
            raise ValueError(f"data.world_frame: expected 'first' or 'scene', got {self.world_frame!r}")
        if self.batch_size < 1 or self.max_batch_size < 1 or self.samples_per_scene < 1:
            raise ValueError("data.batch_size, max_batch_size and samples_per_scene must be >= 1")
        if not (self.source == "procedural" or isinstance(self.source, list)):
            raise ValueError(f"data.source: expected 'procedural' or a list of scenes, got {self.source!r}")
        resolution_set(self.base_resolution, self.resolutions)  # validates

    def hw_set(self) -> list[tuple[int, int]]:
        """The ``(H, W)`` training resolutions."""
        return resolution_set(self.base_resolution, self.resolutions)

    def tokens_per_step(self) -> int:
        """The token budget of one step."""
        if self.batch_tokens > 0:
            return int(self.batch_tokens)
        return self.batch_size * self.views[1] * num_tokens((self.base_resolution, self.base_resolution))

    def samples_for(self, num_views: int, hw: tuple[int, int]) -> int:
        """Samples in a batch of ``num_views`` views of ``hw = (H, W)``."""
        if not self.constant_tokens:
            return min(self.batch_size, self.max_batch_size)
        b = self.tokens_per_step() // (int(num_views) * num_tokens(hw))
        return int(min(max(1, b), self.max_batch_size))

    def view_counts(self) -> list[int]:
        """The view counts a batch may have (``view_set``, else every integer of ``views``)."""
        return list(self.view_set) or list(range(self.views[0], self.views[1] + 1))

    def draw_shape(self, rng: np.random.Generator) -> tuple[int, tuple[int, int], int]:
        """``(V, (H, W), B)`` of one batch, drawn from ``rng``."""
        if self.view_set:
            V = self.view_set[int(rng.integers(len(self.view_set)))]
        else:  # kept apart so that streams drawn before view_set existed stay the same
            V = int(rng.integers(self.views[0], self.views[1] + 1))
        hws = self.hw_set()
        hw = hws[int(rng.integers(len(hws)))]
        return V, hw, self.samples_for(V, hw)

    def shape_set(self) -> list[tuple[int, tuple[int, int], int]]:
        """Every ``(V, (H, W), B)`` that :meth:`draw_shape` can return (the batch buckets)."""
        return [(V, hw, self.samples_for(V, hw)) for V in self.view_counts()
                for hw in self.hw_set()]


@dataclass
class EvalDataConfig:
    """Held-out evaluation data (built by :func:`da3gs.data.sources.make_eval_sets`).

    Fields:
      scenes: number of held-out procedural scenes; scene ``i`` uses seed
        ``EVAL_SEED_BASE + first_seed + i`` (disjoint from every training seed).
      first_seed: offset of the first held-out seed.
      views, height, width: views per procedural scene and their size (multiples of 14).
      batch_size: procedural scenes per returned batch.
      real: real scene entries (as ``DataConfig.source``); unreadable ones are skipped.
      real_views: views per real scene.
      real_res: longest side of real views (rounded to a multiple of 14, aspect kept).
      real_selection: ``"overlap"`` (reference view and overlap-chosen views, fixed by
        ``seed``) or ``"even"`` (evenly spaced over the scene's views).
      seed: seed of the real scenes' view choice.
      procedural: keyword arguments of ``ProceduralConfig`` (default settings if empty).
    """

    scenes: int = 16
    first_seed: int = 0
    views: int = 4
    height: int = 196
    width: int = 252
    batch_size: int = 4
    real: list = field(default_factory=list)
    real_views: int = 8
    real_res: int = 280
    real_selection: str = "overlap"
    seed: int = 0
    procedural: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.real_selection not in ("overlap", "even"):
            raise ValueError(f"eval.real_selection: expected 'overlap' or 'even', got {self.real_selection!r}")
        if self.height % 14 or self.width % 14 or self.real_res % 14:
            raise ValueError("eval: height, width and real_res must be multiples of 14")
