"""View selection of the evaluation protocols (``da3gs eval``): targets, context sampling,
comparison panels.

Targets (``--targets``):
  * ``everyN`` (default ``every8``): the LLFF protocol, views with ``index % N == 0`` held out;
  * ``split:NAME``: the scene's named split (Blender ``transforms_test.json`` -> ``split:test``);
  * ``list:1,2,5``: explicit indices.

Context (from the candidates: the ``train`` split for ``split:`` targets when the scene has one,
else every non-target view):
  * ``fps``: farthest-point sampling on camera centres. Deterministic: it starts from the
    candidate nearest the centroid of the candidates' centres, then repeatedly adds the
    candidate farthest from the chosen set (ties: lowest index). The chosen indices are
    returned in ascending scene order.
  * ``every-nth``: evenly spaced over the candidates (first and last included).
  * ``list``: explicit scene indices (``--context-list``); indices that are also targets are
    allowed but reported as an overlap.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from da3gs.errors import Da3gsError

__all__ = ["parse_targets", "context_candidates", "select_context", "farthest_point_sampling",
           "parse_index_list", "pick_views", "view_file_name", "comparison_panel", "error_heatmap",
           "DEFAULT_MAX_CONTEXT"]

DEFAULT_MAX_CONTEXT = 16
ERROR_SCALE = 0.25  # |error| (mean over RGB) mapped to the top of the heat map's colour scale


def parse_index_list(text: str, n: int, what: str) -> list[int]:
    """``"0,3,7"`` -> [0, 3, 7], checked against a scene of ``n`` views (negative = from the end)."""
    try:
        idx = [int(t) for t in str(text).replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise Da3gsError(f"{what}: expected comma-separated view indices, got {text!r}") from None
    if not idx:
        raise Da3gsError(f"{what}: no view index given")
    bad = [i for i in idx if not -n <= i < n]
    if bad:
        raise Da3gsError(f"{what}: indices {bad[:5]} out of range for a scene of {n} views")
    idx = [i % n for i in idx]
    if len(set(idx)) != len(idx):
        raise Da3gsError(f"{what}: repeated view indices in {text!r}")
    return idx


def parse_targets(spec: str, scene) -> list[int]:
    """Target view indices of ``scene`` for a ``--targets`` spec (module docstring)."""
    n = len(scene)
    m = re.fullmatch(r"every(\d+)", spec)
    if m:
        every = int(m.group(1))
        if every < 2:
            raise Da3gsError(f"--targets {spec}: expected everyN with N >= 2")
        _, test = scene.llff_holdout(every)
        return test
    if spec.startswith("split:"):
        name = spec[len("split:"):]
        if not scene.split:
            raise Da3gsError(f"--targets {spec}: the {scene.format} scene has no named splits "
                             "(Blender transforms_{train,val,test}.json or nerfstudio "
                             "*_filenames); use everyN or list:")
        if name not in scene.split or not scene.split[name]:
            raise Da3gsError(f"--targets {spec}: no split {name!r} (the scene has "
                             f"{', '.join(k for k, v in scene.split.items() if v)})")
        return sorted(scene.split[name])
    if spec.startswith("list:"):
        return sorted(parse_index_list(spec[len("list:"):], n, f"--targets {spec}"))
    raise Da3gsError(f"--targets: expected everyN (e.g. every8), split:NAME or list:I,J,..., got {spec!r}")


def context_candidates(scene, targets: list[int], spec: str) -> list[int]:
    """Views the context may come from: the train split for ``split:`` targets, else non-targets."""
    tset = set(targets)
    if spec.startswith("split:") and scene.split and scene.split.get("train") and spec != "split:train":
        return sorted(i for i in scene.split["train"] if i not in tset)
    return [i for i in range(len(scene)) if i not in tset]


def camera_centres(c2w: torch.Tensor) -> np.ndarray:
    return c2w[:, :3, 3].double().cpu().numpy()


def farthest_point_sampling(points: np.ndarray, k: int) -> list[int]:
    """Indices (ascending) of ``k`` of ``points (M, 3)``: start nearest the centroid, then greedy
    farthest from the chosen set (ties: lowest index)."""
    pts = np.asarray(points, dtype=np.float64)
    m = len(pts)
    if not 1 <= k <= m:
        raise Da3gsError(f"farthest-point sampling: cannot pick {k} of {m} views")
    first = int(np.argmin(np.linalg.norm(pts - pts.mean(0), axis=1)))
    chosen = [first]
    dist = np.linalg.norm(pts - pts[first], axis=1)
    while len(chosen) < k:
        dist[chosen] = -1.0
        nxt = int(np.argmax(dist))  # argmax returns the first maximum: lowest index on ties
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pts - pts[nxt], axis=1))
    return sorted(chosen)


def select_context(scene, candidates: list[int], targets: list[int], n: int | None,
                   select: str, context_list: str | None) -> tuple[list[int], bool, list[str]]:
    """Context view indices, whether they overlap the targets, and notes for the user.

    ``n`` None: every candidate, capped at :data:`DEFAULT_MAX_CONTEXT` (with a note).
    """
    notes: list[str] = []
    if context_list is not None:
        ctx = sorted(parse_index_list(context_list, len(scene), "--context-list"))
        if n is not None and n != len(ctx):
            raise Da3gsError(f"--context {n} disagrees with the {len(ctx)} views of --context-list")
        overlap = sorted(set(ctx) & set(targets))
        if overlap:
            notes.append(f"warning: context views {overlap} are also targets; their scores are "
                         "not novel-view scores (metrics.json records overlap: true)")
        return ctx, bool(overlap), notes
    if select == "list":
        raise Da3gsError("--select list needs --context-list I,J,...")
    if not candidates:
        raise Da3gsError("no context views left: every view of the scene is a target")
    if n is None:
        n = len(candidates)
        if n > DEFAULT_MAX_CONTEXT:
            notes.append(f"note: using {DEFAULT_MAX_CONTEXT} of {n} available context views "
                         f"({select}); pass --context N to change")
            n = DEFAULT_MAX_CONTEXT
    if n > len(candidates):
        raise Da3gsError(f"--context {n}: only {len(candidates)} non-target views available "
                         f"(scene of {len(scene)} views, {len(targets)} targets)")
    return pick_views(scene, candidates, n, select, "--context"), False, notes


def pick_views(scene, candidates: list[int], n: int, select: str, what: str = "--views") -> list[int]:
    """``n`` of the scene indices ``candidates`` by ``fps`` or ``every-nth`` (ascending)."""
    if n < 1:
        raise Da3gsError(f"{what}: expected a positive number of views, got {n}")
    if n > len(candidates):
        raise Da3gsError(f"{what} {n}: the scene has only {len(candidates)} views")
    if select == "fps":
        pick = farthest_point_sampling(camera_centres(scene.c2w[candidates]), n)
    elif select == "every-nth":
        pick = np.round(np.linspace(0, len(candidates) - 1, n)).astype(int).tolist()
    else:
        raise Da3gsError(f"--select: expected fps, every-nth or list, got {select!r}")
    return sorted(candidates[i] for i in pick)


def view_file_name(name: str, used: set[str]) -> str:
    """A flat, unique file stem for a scene view name (``test/r_0.png`` -> ``test_r_0``)."""
    stem = name.rsplit(".", 1)[0] if "." in name.rsplit("/", 1)[-1] else name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.replace("\\", "/").replace("/", "_")).strip("._") or "view"
    out, k = stem, 1
    while out in used:
        k += 1
        out = f"{stem}_{k}"
    used.add(out)
    return out


def error_heatmap(pred: np.ndarray, gt: np.ndarray, scale: float = ERROR_SCALE) -> np.ndarray:
    """Mean absolute RGB error as a black-red-yellow-white heat map, ``scale`` at the top.
    pred, gt: (H, W, 3) float in [0, 1] -> (H, W, 3) uint8."""
    e = np.clip(np.abs(pred - gt).mean(-1) / scale, 0, 1)
    stops = np.array([[0, 0, 0], [0.8, 0.05, 0.05], [1, 0.85, 0.1], [1, 1, 1]], dtype=np.float64)
    x = e * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[..., None]
    rgb = stops[i] * (1 - f) + stops[i + 1] * f
    return (rgb * 255).round().astype(np.uint8)


def comparison_panel(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """prediction | truth | error heat map, (H, 3W, 3) uint8."""
    to8 = lambda a: (np.clip(a, 0, 1) * 255).round().astype(np.uint8)  # noqa: E731
    return np.concatenate([to8(pred), to8(gt), error_heatmap(pred, gt)], axis=1)
