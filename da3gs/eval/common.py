"""What the evaluation protocols share: app hooks, inference on scene views, pose errors."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from da3gs.errors import Da3gsError

__all__ = ["Hooks", "EvalSceneError", "infer_views", "pose_errors"]


class EvalSceneError(Da3gsError):
    """The scene's data cannot be evaluated (e.g. no valid ground-truth depth); the command line
    names the scene in front of the message."""


@dataclass(frozen=True)
class Hooks:
    """What the calling application plugs into a protocol; every field is optional.

    Attributes:
        timer: ``timer(stage)`` -> context manager timing that stage (``da3gs.apps.common.Timer``:
            the stage names become ``timings_s`` of ``metrics.json``); default: no timing.
        progress: progress display with ``bar(iterable, desc, unit=...)`` and ``steps(total,
            desc) -> (bar, on_step)`` (``da3gs.apps.common.Progress``); default: none.
        infer: ``infer(model, *args, **kwargs)`` replacing ``model.infer(*args, **kwargs)``
            (context parallelism over several processes); default: ``model.infer``.
    """

    timer: Callable[[str], AbstractContextManager] | None = None
    progress: Any = None
    infer: Callable[..., Any] | None = None

    def stage(self, name: str) -> AbstractContextManager:
        """Context manager timing the stage ``name`` (nothing without a ``timer``)."""
        return self.timer(name) if self.timer is not None else nullcontext()

    def bar(self, iterable, desc: str, unit: str = "it"):
        """``iterable`` with a progress bar when there is a ``progress``."""
        return self.progress.bar(iterable, desc, unit=unit) if self.progress is not None else iterable

    def steps(self, total: int, desc: str):
        """(context manager, ``on_step`` callback or None) for an optimisation loop."""
        if self.progress is None:
            return nullcontext(), None
        return self.progress.steps(total, desc)


def infer_views(model, scene, idx: list[int], bg, conditioned: bool, gs: bool, process_res: int,
                ref_view: str, hooks: Hooks | None = None):
    """Run ``model`` on the scene views ``idx`` (RGBA composited on ``bg``), conditioned on their
    cameras when ``conditioned``, predicting Gaussians when ``gs``. Returns the
    :class:`~da3gs.types.Prediction`."""
    from PIL import Image

    paths = [scene.image_paths[i] for i in idx]
    with Image.open(paths[0]) as im:
        alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    # prepare_images drops alpha (as the official reader); composite on bg here instead
    imgs = scene.subset(idx).load_images(bg) if alpha else paths
    c2w = K = None
    if conditioned:
        c2w, K = scene.c2w[idx].float(), scene.K[idx].float()
    kw = dict(process_res=process_res, ref_view=ref_view, infer_gs=gs)
    if hooks is not None and hooks.infer is not None:
        return hooks.infer(model, imgs, c2w, K, **kw)
    return model.infer(imgs, c2w, K, **kw)


def pose_errors(pred_c2w, gt_c2w) -> dict:
    """Per-view errors of already aligned cameras, and pair-wise relative errors.

    Returns ``rotation_error_deg`` and ``translation_error`` (per view),
    ``rotation_error_deg_mean``, ``translation_error_mean`` and, for 2 views or more,
    ``relative_rotation_error_deg_mean`` and ``relative_translation_error_deg_mean``."""
    from da3gs.metrics import relative_pose_errors
    from da3gs.metrics.pose import rotation_angle_deg

    Rp, Rg = pred_c2w[:, :3, :3].double(), gt_c2w[:, :3, :3].double()
    rot = rotation_angle_deg(Rg.transpose(1, 2) @ Rp)
    trans = (pred_c2w[:, :3, 3].double() - gt_c2w[:, :3, 3].double()).norm(dim=-1)
    d = {"rotation_error_deg": [round(float(v), 4) for v in rot],
         "translation_error": [round(float(v), 6) for v in trans],
         "rotation_error_deg_mean": float(rot.mean()), "translation_error_mean": float(trans.mean())}
    if len(rot) >= 2:
        rr, rt = relative_pose_errors(pred_c2w.double(), gt_c2w.double())
        d["relative_rotation_error_deg_mean"] = float(rr.mean())
        d["relative_translation_error_deg_mean"] = float(rt.mean())
    return d
