"""Map-style multi-view dataset over real scenes, and the batch samplers that group it.

:class:`MultiViewDataset` reads every scene the project's readers understand
(:func:`da3gs.data.load_scene`: Blender/nerfstudio, COLMAP, LLFF, DTU, TUM / ICL RGB-D).
An item is one sample (a :class:`~da3gs.data.batch.ViewBatch` with ``B = 1``) of ``V``
views chosen by overlap (:mod:`da3gs.data.overlap`), each resized and randomly cropped to
``H x W`` with its intrinsics updated exactly (:mod:`da3gs.data.crop`), photometrically
augmented (:mod:`da3gs.data.augment`), pose-conditioned with probability
``pose_cond_prob``.

Depth: scenes with depth (RGB-D) give ``depth`` resized with nearest neighbour and
``valid = depth > 0``; scenes without depth (Blender, COLMAP, LLFF, DTU) give ``depth = 0``
and ``valid = False`` everywhere, so depth and point losses skip them and only cameras and
rays supervise. ``normals`` and ``sky`` are None.

Unreadable scenes are skipped, never raised: at construction (camera files) they are
counted in :attr:`MultiViewDataset.skipped` and logged once in one warning; a scene whose
images fail later is dropped then (logged once, counted in that process) and the item is
drawn from the next scene.

Batching: all samples of a batch share ``V`` and ``H x W``. Items are addressed by a
:class:`SampleKey` ``(index, num_views, height, width, seed)`` that fixes all of that;
:class:`GroupedBatchSampler` yields lists of keys sharing ``(V, H, W)``, sharded over
ranks with :class:`torch.utils.data.DistributedSampler` semantics, so
``DataLoader(ds, batch_sampler=sampler, collate_fn=ViewBatch.collate)`` works.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler, Sampler

from da3gs.geometry import as_homogeneous
from da3gs.io.images import read_image

from .augment import augment_batch
from .batch import ViewBatch
from .config import DataConfig, mix_seed
from .crop import resize_crop
from .overlap import select_views
from .scene import Scene, load_scene

__all__ = [
    "DataConfig",
    "GroupedBatchSampler",
    "MultiViewDataset",
    "SampleKey",
    "assemble_sample",
    "load_scene_entries",
    "load_view",
    "to_first_frame",
]

log = logging.getLogger(__name__)


class SampleKey(NamedTuple):
    """Address of one sample: scene item ``index``, its shape and the seed of its draws."""

    index: int
    num_views: int
    height: int
    width: int
    seed: int


def _expand(entries) -> list:
    out = []
    for e in entries:
        if isinstance(e, (str, Path)) and any(c in str(e) for c in "*?["):
            out += sorted(glob.glob(str(e))) or [e]  # a glob matching nothing is reported as unreadable
        else:
            out.append(e)
    return out


def load_scene_entries(entries) -> tuple[list[tuple[str, Scene]], list[str]]:
    """Load scene entries (paths, globs, ``{"path": .., **opts}`` dicts or :class:`Scene`).

    Returns:
        ``[(name, scene)]`` of the readable scenes with at least one view, and one
        ``"entry: reason"`` line per unreadable one. Never raises for a bad scene.
    """
    ok, bad = [], []
    for e in _expand(list(entries)):
        try:
            if isinstance(e, Scene):
                name, scene = (e.image_paths[0].parent.name if len(e) else "") or f"scene{len(ok) + len(bad)}", e
            else:
                opts = dict(e) if isinstance(e, dict) else {"path": e}
                path = opts.pop("path")
                name = Path(path).name or str(path)
                scene = load_scene(path, **opts)
            if len(scene) < 1:
                raise ValueError("no views")
            ok.append((name, scene))
        except Exception as err:  # noqa: BLE001 - any unreadable scene is skipped, never fatal
            bad.append(f"{e}: {' '.join(str(err).split()) or type(err).__name__}")
    return ok, bad


def to_first_frame(c2w: torch.Tensor) -> torch.Tensor:
    """``c2w (..., V, 4, 4)`` expressed in view 0's camera frame (view 0 becomes the identity)."""
    ref_inv = torch.linalg.inv_ex(c2w[..., :1, :, :].double())[0]  # inv without its error check (a sync)
    out = ref_inv @ c2w.double()
    return as_homogeneous(out[..., :3, :]).to(c2w.dtype)  # exact bottom row


class MultiViewDataset(Dataset):
    """Samples of ``V`` overlapping views from real scenes.

    Args:
        scenes: scene entries (see :func:`load_scene_entries`); default ``cfg.source``.
        cfg: the data settings (views, resolutions, zoom, aug, pose_cond_prob, min_overlap,
            world_frame, samples_per_scene, seed).
        augment: apply the photometric augmentation (False for evaluation).
    Raises:
        SceneError: when no scene at all can be read (nothing to sample from).

    ``len(ds) = number of readable scenes * cfg.samples_per_scene``; item ``i`` comes from
    scene ``i % number of scenes``. ``ds[key]`` with a :class:`SampleKey` returns that
    sample; ``ds[i]`` with an int draws ``V`` and ``H x W`` from ``(cfg.seed, i)``.
    """

    def __init__(self, scenes=None, cfg: DataConfig | None = None, augment: bool = True):
        from .scene import SceneError

        self.cfg = cfg or DataConfig(source=list(scenes or []))
        entries = scenes if scenes is not None else self.cfg.source
        if isinstance(entries, (str, Path, dict, Scene)):
            entries = [entries]
        self.scenes, self.skipped_reasons = load_scene_entries(entries)
        self.augment = augment
        self._bad: set[int] = set()
        if self.skipped_reasons:
            log.warning("MultiViewDataset: skipped %d of %d scenes that cannot be read:\n  %s",
                        len(self.skipped_reasons), len(self.skipped_reasons) + len(self.scenes),
                        "\n  ".join(self.skipped_reasons))
        if not self.scenes:
            raise SceneError(f"MultiViewDataset: none of {len(self.skipped_reasons)} scene entries can be read")

    @property
    def skipped(self) -> int:
        """Scenes skipped because they cannot be read (at construction, plus any whose images
        failed later in this process)."""
        return len(self.skipped_reasons)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.scenes]

    def __len__(self) -> int:
        return len(self.scenes) * self.cfg.samples_per_scene

    def key(self, index: int) -> SampleKey:
        """The key an int index stands for (shape drawn from ``(cfg.seed, index)``)."""
        rng = np.random.default_rng(mix_seed(self.cfg.seed, 0x1DE7, index))
        V, (H, W), _ = self.cfg.draw_shape(rng)
        return SampleKey(int(index), V, H, W, mix_seed(self.cfg.seed, 0x5A3E, index))

    def __getitem__(self, key) -> ViewBatch:
        if not isinstance(key, SampleKey):
            key = self.key(int(key))
        n = len(self.scenes)
        first = int(key.index) % n
        for k in range(n):
            s = (first + k) % n
            if s in self._bad:
                continue
            try:
                return self._sample(s, key)
            except Exception as err:  # noqa: BLE001 - drop the scene, draw from the next one
                self._bad.add(s)
                msg = f"{self.scenes[s][0]}: {' '.join(str(err).split()) or type(err).__name__}"
                self.skipped_reasons.append(msg)
                log.warning("MultiViewDataset: skipping scene that cannot be read: %s", msg)
        from .scene import SceneError

        raise SceneError("MultiViewDataset: every scene failed to read")

    def _sample(self, s: int, key: SampleKey) -> ViewBatch:
        cfg = self.cfg
        name, scene = self.scenes[s]
        rng = np.random.default_rng(key.seed)
        depth_fn = (lambda i: torch.from_numpy(scene.load_depth(i))) if scene.depth_paths is not None else None
        idx = select_views(scene.c2w, scene.K, scene.image_hw, key.num_views, rng, depth_fn=depth_fn,
                           near_far=scene.near_far, min_overlap=cfg.min_overlap)
        b = assemble_sample(scene, idx, (key.height, key.width), rng=rng, zoom=cfg.zoom,
                            world_frame=cfg.world_frame, name=name)
        aug_seed, pose_u = int(rng.integers(2**62)), float(rng.uniform())
        if self.augment:
            b = augment_batch(b, cfg.aug, seed=aug_seed)
        b.pose_conditioned = torch.tensor([pose_u < cfg.pose_cond_prob])
        return b


def load_view(scene: Scene, i: int):
    """View ``i`` of ``scene``: image (3, H0, W0) float32 in [0, 1], K (3, 3) float64 in its
    pixels, depth (H0, W0) float32 metres (0 = none) or None."""
    img = read_image(scene.image_paths[i], background=scene.background or (1.0, 1.0, 1.0))
    K = scene.K[i].clone()
    h0, w0 = scene.image_hw[i]
    h, w = img.shape[:2]
    if (h, w) != (h0, w0):  # e.g. files replaced by resized copies
        if abs(w / h - w0 / h0) > 0.01 * (w0 / h0):
            raise ValueError(f"{scene.image_paths[i]}: image is {w}x{h}, cameras say {w0}x{h0}")
        K[0] *= w / w0
        K[1] *= h / h0
    image = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    d = scene.load_depth(i)
    if d is None:
        return image, K, None
    d = torch.from_numpy(d)
    if tuple(d.shape) != (h, w):
        d = F.interpolate(d[None, None], size=(h, w), mode="nearest-exact")[0, 0]
    return image, K, d


def assemble_sample(scene: Scene, idx, hw: tuple[int, int], rng: np.random.Generator | None = None,
                    zoom=(1.0, 1.0), world_frame: str = "first", name: str = "") -> ViewBatch:
    """One sample (``B = 1``) of the views ``idx`` of ``scene`` at ``hw = (H, W)``, not
    augmented, ``pose_conditioned = False``.

    With ``rng``, each view gets a zoom uniform in ``zoom`` and a uniform crop position;
    without, a centred crop at zoom 1 (evaluation). Views without depth get ``depth = 0``,
    ``valid = False``.
    """
    H, W = int(hw[0]), int(hw[1])
    imgs, Ks, depths = [], [], []
    for i in idx:
        img, K, d = load_view(scene, int(i))
        if rng is None:
            z, at = 1.0, (0.5, 0.5)
        else:
            z, at = float(rng.uniform(*zoom)), (float(rng.uniform()), float(rng.uniform()))
        img, K, d = resize_crop(img, K, (H, W), depth=d, zoom=z, crop_at=at)
        imgs.append(img)
        Ks.append(K)
        depths.append(d if d is not None else torch.zeros(H, W))
    depth = torch.stack(depths)[None].float()
    valid = torch.isfinite(depth) & (depth > 0)
    depth = torch.where(valid, depth, torch.zeros((), dtype=depth.dtype))
    c2w = scene.c2w[[int(i) for i in idx]][None]
    if world_frame == "first":
        c2w = to_first_frame(c2w)
    return ViewBatch(images=torch.stack(imgs)[None].float(), depth=depth, valid=valid, c2w=c2w.float(),
                     K=torch.stack(Ks)[None].float(), pose_conditioned=torch.zeros(1, dtype=torch.bool),
                     scene_ids=[name])


class GroupedBatchSampler(Sampler):
    """Batches of :class:`SampleKey` sharing ``(V, H, W)``, sharded over ranks.

    Each epoch, the item indices are shuffled and sharded exactly as
    ``DistributedSampler(range(num_items), num_replicas, rank, shuffle, seed)`` with
    ``set_epoch(epoch)`` does (each rank a disjoint shard, padded by repetition to equal
    length). The sequence of batch shapes ``(V, (H, W), B)`` is drawn from
    ``(seed, epoch)`` alone, so it is the same on every rank and every rank makes the same
    number of steps with the same token count. Each key's seed mixes ``(seed, epoch, the
    item's position in the padded global order)``. Deterministic given the seed.

    Args:
        num_items: length of the dataset.
        cfg: the data settings (views, resolutions, batch size / token budget).
        num_replicas, rank: the process group (default 1, 0).
        shuffle: shuffle the items each epoch.
        seed: default ``cfg.seed``.
        drop_last: drop a last batch smaller than its drawn size.
    """

    def __init__(self, num_items: int, cfg: DataConfig, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int | None = None, drop_last: bool = False):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank: expected 0 <= rank < {num_replicas}, got {rank}")
        self.num_items, self.cfg = int(num_items), cfg
        self.num_replicas, self.rank, self.shuffle = int(num_replicas), int(rank), bool(shuffle)
        self.seed = cfg.seed if seed is None else int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.skip = 0  # batches to skip at the start of the next iteration (resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _shard(self) -> list[int]:
        ds = DistributedSampler(range(self.num_items), num_replicas=self.num_replicas, rank=self.rank,
                                shuffle=self.shuffle, seed=self.seed, drop_last=False)
        ds.set_epoch(self.epoch)
        return list(ds)

    def _batches(self):
        idx = self._shard()
        rng = np.random.default_rng(mix_seed(self.seed, self.epoch, 0xBA7C))
        k = 0
        while k < len(idx):
            V, (H, W), B = self.cfg.draw_shape(rng)
            if k + B > len(idx) and self.drop_last:
                return
            yield [SampleKey(i, V, H, W, mix_seed(self.seed, self.epoch, self.rank + (k + j) * self.num_replicas))
                   for j, i in enumerate(idx[k:k + B])]
            k += B

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for n, b in enumerate(self._batches()):
            if n >= skip:
                yield b

    def __len__(self) -> int:
        n = -(-self.num_items // self.num_replicas)  # shard length (padded)
        rng = np.random.default_rng(mix_seed(self.seed, self.epoch, 0xBA7C))
        k = count = 0
        while k < n:
            B = self.cfg.draw_shape(rng)[2]
            if k + B > n and self.drop_last:
                break
            k, count = k + B, count + 1
        return count
