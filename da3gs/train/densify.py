"""Densification strategies for :func:`da3gs.train.refine.refine_gaussians`: gsplat's own.

``strategy="default"`` is gsplat's :class:`gsplat.strategy.DefaultStrategy` (3DGS: clone small
and split large Gaussians whose mean screen-space gradient exceeds ``grow_grad2d``, prune
those below ``prune_opa`` opacity or too large, periodic opacity reset); ``"mcmc"`` is
:class:`gsplat.strategy.MCMCStrategy` (3DGS-MCMC: dead Gaussians are teleported onto live
ones, 5 % more every round up to ``cap_max``, noise on the positions of near-transparent
ones). Both run on the CPU as well: gsplat's strategy code is pure torch and reads only the
rasteriser's ``info`` (``means2d`` with its gradient, ``radii``, ``width``, ``height``,
``n_cameras``), which our torch rasteriser also fills (:func:`da3gs.render.render`'s ``info``).
The only CUDA kernels the strategies call are MCMC's relocation (``compute_relocation``) and
the covariance of its noise (``quat_scale_to_covar_preci``); on the CPU those two are replaced
here by torch versions of the same formulas (:func:`compute_relocation_torch`), everything else
(grow, split, prune, reset, the optimizer-state surgery) is gsplat's code on both devices.

What the subclasses here change, and why:

  * the schedule is scaled to the run length (:func:`strategy_defaults`);
  * opacity reset at ``step % reset_every == 0`` for ``step > 0`` only: gsplat 1.4 also resets at
    step 0 (which would wipe a prediction's opacities before the first step) and gsplat 1.5.3's
    condition ``step % reset_every == 0 & step > 0`` parses as ``(step % reset_every == 0) and
    (0 > 0)``, so 1.5.3 never resets; the rule here is the 3DGS one on every version;
  * ``radii`` given in the shape of the installed gsplat ((C, N) on 1.4, (C, N, 2) on 1.5);
  * pruning of Gaussians that never contribute (``prune_unseen``): a Gaussian whose projected
    centre never received a gradient (no pixel of any drawn view depended on it: culled,
    outside every frustum or fully occluded) once every context view has been drawn at least
    once is removed at the next refinement round (``default``) or treated as dead and
    teleported (``mcmc``).

Steps are counted from 1 (the refinement loop's numbering); gsplat's conditions (``step >
refine_start_iter``, ``step % refine_every == 0``, ``step < refine_stop_iter``) apply unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from gsplat.strategy import DefaultStrategy, MCMCStrategy
from gsplat.strategy.ops import _update_param_with_optimizer, remove, reset_opa

from da3gs.errors import Da3gsError
from da3gs.render.torch_rasterizer import quat_to_rotmat
from da3gs.train.refine import STRATEGIES

__all__ = ["STRATEGIES", "strategy_defaults", "make_strategy", "compute_relocation_torch",
           "RefineDefaultStrategy", "RefineMCMCStrategy"]


def _gsplat_radii_pairs() -> bool:
    """Whether the installed gsplat's strategies expect per-axis radii ``(..., 2)`` (1.5 on)."""
    import gsplat

    major, minor = (int(x) for x in gsplat.__version__.split(".")[:2])
    return (major, minor) >= (1, 5)


def strategy_defaults(name: str, steps: int, num_gaussians: int) -> dict:
    """The strategy's parameters for a run of ``steps`` steps from ``num_gaussians`` Gaussians.

    gsplat's defaults are for 30k-step runs (refine every 100 steps from 500 to 15k (default)
    or 25k (MCMC), opacity reset every 3000). Refinement runs are hundreds of steps, so the
    schedule is scaled to the run; the rule, with S = ``steps``:

      * ``refine_every = clamp(S // 10, 5, 100)`` (gradient statistics gathered over that many
        views between rounds; 100 as in gsplat from S = 1000 on);
      * ``refine_start_iter = refine_every // 2``: first round at step ``refine_every``;
      * ``refine_stop_iter``: ``S // 2`` for default (gsplat's 15k of 30k), ``5 S // 6`` for
        MCMC (25k of 30k): the last part of the run only fits what exists;
      * ``reset_every`` (default): ``S + 1``, i.e. no opacity reset. An opacity reset clamps
        every opacity to 0.01 (logit -4.6); at the 3DGS opacity rate (0.05 on logits) Adam needs
        ~100 steps to bring a splat back to 0.5, 3DGS gives it 3000; measured on the CPU
        (docs/nvs_results.md) a reset inside a few-hundred-step run costs PSNR, so it is off by
        default and ``reset_every`` turns it on;
      * ``cap_max`` (MCMC) ``= 2 * num_gaussians`` (gsplat: 1M for 100k random points; MCMC grows
        5 % per round, so ~1.6x at most in 10 rounds);
      * ``opacity_reg`` and ``scale_reg`` (MCMC, gsplat's simple_trainer MCMC recipe): 0.01,
        the weights of ``mean(sigmoid(opacity))`` and ``mean(exp(log-scales))`` added to the
        loss; 0 for default.
    Everything else is gsplat's default (``grow_grad2d`` 2e-4, ``grow_scale3d`` 0.01,
    ``prune_opa`` 0.005, ``prune_scale3d`` 0.1, ``noise_lr`` 5e5, ``min_opacity`` 0.005, ...).
    """
    if name not in STRATEGIES:
        raise Da3gsError(f"refine strategy: expected one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "none":
        return {}
    every = min(100, max(5, steps // 10))
    d: dict[str, Any] = {"refine_every": every, "refine_start_iter": every // 2,
                         "prune_unseen": True}
    if name == "default":
        d.update(refine_stop_iter=steps // 2, reset_every=steps + 1)
    else:
        d.update(refine_stop_iter=5 * steps // 6, cap_max=max(2 * num_gaussians, 1),
                 opacity_reg=0.01, scale_reg=0.01)
    return d


class _Unseen:
    """Mixin: track, per Gaussian, whether it ever received a screen-space gradient
    (``state["seen"]`` (N,) float, kept aligned by gsplat's ops as any tensor of the state)
    and which views were drawn (``state["views"]``, a set)."""

    prune_unseen: bool = True

    @torch.no_grad()
    def _track(self, params, state: dict, info: dict, packed: bool) -> None:
        n = len(params["means"])
        if state.get("seen") is None:
            state["seen"] = torch.zeros(n, device=params["means"].device)
        state["views"].add(info["view"])
        grad = info["means2d"].grad
        if grad is None:
            return
        hit = grad.abs().sum(-1) > 0                                     # (C, N) or (nnz,)
        ids = info["gaussian_ids"][hit] if packed else torch.where(hit)[1]
        state["seen"].index_fill_(0, ids.long(), 1.0)

    def _unseen_mask(self, state: dict, n_views: int) -> torch.Tensor | None:
        """(N,) bool of never-contributing Gaussians once every view was drawn, else None."""
        if not self.prune_unseen or state.get("seen") is None or len(state["views"]) < n_views:
            return None
        return state["seen"] == 0


@dataclass
class RefineDefaultStrategy(_Unseen, DefaultStrategy):
    """gsplat's :class:`DefaultStrategy` with the version-independent opacity-reset rule, the
    installed version's radii shape and never-contributing pruning (module docstring).

    ``step_post_backward(..., info)`` needs in ``info`` also ``view`` (index of the drawn
    context view) and ``n_views`` (their number)."""

    prune_unseen: bool = True

    def initialize_state(self, scene_scale: float = 1.0) -> dict[str, Any]:
        state = super().initialize_state(scene_scale)
        state.update(seen=None, views=set(), n_unseen_pruned=0, n_grown=0, n_pruned=0, n_resets=0)
        return state

    def step_post_backward(self, params, optimizers, state, step, info, packed=False):
        """gsplat's ``step_post_backward`` (same order: statistics, grow, prune, reset) with the
        changes of the module docstring."""
        self._track(params, state, info, packed)
        if step >= self.refine_stop_iter:
            return
        radii = info["radii"]
        if not _gsplat_radii_pairs() and radii.dim() == (2 if packed else 3):
            radii = radii.max(dim=-1).values                            # 1.4: one radius
        self._update_state(params, state, {**info, "radii": radii}, packed=packed)
        if (step > self.refine_start_iter and step % self.refine_every == 0
                and step % self.reset_every >= self.pause_refine_after_reset):
            n_dupli, n_split = self._grow_gs(params, optimizers, state, step)
            state["n_grown"] += n_dupli + n_split
            state["n_pruned"] += self._prune_gs(params, optimizers, state, step)
            unseen = self._unseen_mask(state, info["n_views"])
            if unseen is not None and bool(unseen.any()):
                state["n_unseen_pruned"] += int(unseen.sum())
                remove(params=params, optimizers=optimizers, state=state, mask=unseen)
            state["grad2d"].zero_()
            state["count"].zero_()
            if self.refine_scale2d_stop_iter > 0:
                state["radii"].zero_()
        if step > 0 and step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)
            state["n_resets"] += 1


def compute_relocation_torch(opacities: torch.Tensor, scales: torch.Tensor, ratios: torch.Tensor,
                             binoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch version of ``gsplat.relocation.compute_relocation`` (3DGS-MCMC, eq. 9).

    Args:
      opacities (N,) in (0, 1); scales (N, 3) linear; ratios (N,) how many Gaussians share
      each source (clamped to [1, n_max]); binoms (n_max, n_max) binomial table.
    Returns:
      new_opacities (N,) ``1 - (1 - o)^(1/n)``; new_scales (N, 3) ``o / D * s`` with
      ``D = sum_{i=1..n} sum_{k=0..i-1} C(i-1, k) (-1)^k / sqrt(k + 1) * o_new^(k+1)``.
      Computed in float64 (the CUDA kernel's float32 alternating sum loses digits for large n),
      returned in the input dtype.
    """
    n_max = binoms.shape[0]
    dt = opacities.dtype
    o = opacities.double()
    n = ratios.clamp(1, n_max).long()
    new_o = 1.0 - (1.0 - o).pow(1.0 / n.double())
    k = torch.arange(n_max, device=o.device, dtype=torch.float64)
    term = (-1.0) ** k / torch.sqrt(k + 1) * new_o[:, None].pow(k + 1)   # (N, n_max) over k
    rows = (torch.arange(1, n_max + 1, device=o.device)[None] <= n[:, None]).double()  # i <= n
    denom = ((rows @ binoms.double().to(o.device)) * term).sum(-1)       # sum_i sum_k
    coeff = o / denom
    return new_o.to(dt), (coeff[:, None] * scales.double()).to(dt)


def _relocation(params, binoms, sampled, min_opacity):
    opacities = torch.sigmoid(params["opacities"])
    eps = torch.finfo(torch.float32).eps
    new_o, new_s = compute_relocation_torch(opacities[sampled], torch.exp(params["scales"])[sampled],
                                            torch.bincount(sampled)[sampled] + 1, binoms)
    return new_o.clamp(min=min_opacity, max=1.0 - eps), new_s


@torch.no_grad()
def _relocate_torch(params, optimizers, mask, binoms, min_opacity):
    """gsplat's ``ops.relocate`` (dead Gaussians ``mask`` become copies of live ones drawn by
    opacity, the sources' opacity and scale split by eq. 9) with the torch relocation."""
    from gsplat.strategy.ops import _multinomial_sample

    dead = mask.nonzero(as_tuple=True)[0]
    alive = (~mask).nonzero(as_tuple=True)[0]
    probs = torch.sigmoid(params["opacities"])[alive].flatten()
    sampled = alive[_multinomial_sample(probs, len(dead), replacement=True)]
    new_o, new_s = _relocation(params, binoms, sampled, min_opacity)

    def param_fn(name, p):
        _write_relocated(name, p, sampled, new_o, new_s)
        p[dead] = p[sampled]
        return torch.nn.Parameter(p, requires_grad=p.requires_grad)

    def optimizer_fn(key, v):
        v[sampled] = 0
        return v

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)


def _write_relocated(name: str, p: torch.Tensor, sampled: torch.Tensor, new_o: torch.Tensor,
                     new_s: torch.Tensor) -> None:
    """Write the relocated sources' opacity (logit) and scale (log) into parameter ``p``."""
    if name == "opacities":
        p[sampled] = torch.logit(new_o)
    elif name == "scales":
        p[sampled] = torch.log(new_s)


@torch.no_grad()
def _sample_add_torch(params, optimizers, n, binoms, min_opacity):
    """gsplat's ``ops.sample_add`` (``n`` new Gaussians copied from ones drawn by opacity)
    with the torch relocation."""
    from gsplat.strategy.ops import _multinomial_sample

    probs = torch.sigmoid(params["opacities"]).flatten()
    sampled = _multinomial_sample(probs, n, replacement=True)
    new_o, new_s = _relocation(params, binoms, sampled, min_opacity)

    def param_fn(name, p):
        _write_relocated(name, p, sampled, new_o, new_s)
        return torch.nn.Parameter(torch.cat([p, p[sampled]]), requires_grad=p.requires_grad)

    def optimizer_fn(key, v):
        return torch.cat([v, torch.zeros((len(sampled), *v.shape[1:]), device=v.device, dtype=v.dtype)])

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)


@torch.no_grad()
def _inject_noise_torch(params, scaler):
    """gsplat's ``ops.inject_noise_to_position`` with a torch covariance."""
    opacities = torch.sigmoid(params["opacities"].flatten())
    R = quat_to_rotmat(params["quats"])
    M = R * torch.exp(params["scales"])[:, None, :]
    covars = M @ M.transpose(-1, -2)
    gate = 1 / (1 + torch.exp(-100 * ((1 - opacities) - 0.995)))
    noise = torch.randn_like(params["means"]) * gate[:, None] * scaler
    params["means"].add_(torch.einsum("bij,bj->bi", covars, noise))


@dataclass
class RefineMCMCStrategy(_Unseen, MCMCStrategy):
    """gsplat's :class:`MCMCStrategy`; never-contributing Gaussians count as dead (module
    docstring). ``torch_ops``: use the torch relocation and noise (CPU); otherwise gsplat's
    ops (CUDA kernels). ``opacity_reg`` / ``scale_reg`` are read by the refinement loop."""

    prune_unseen: bool = True
    torch_ops: bool = False
    opacity_reg: float = 0.01
    scale_reg: float = 0.01

    def initialize_state(self) -> dict[str, Any]:
        state = super().initialize_state()
        state.update(seen=None, views=set(), n_relocated=0, n_added=0, n_unseen_pruned=0)
        return state

    def step_post_backward(self, params, optimizers, state, step, info, lr, packed=False):
        """gsplat's ``step_post_backward`` (relocate, add, noise)."""
        from gsplat.strategy import ops

        self._track(params, state, info, packed)
        state["binoms"] = state["binoms"].to(params["means"].device)
        binoms = state["binoms"]
        if self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0:
            with torch.no_grad():
                dead = torch.sigmoid(params["opacities"].flatten()) <= self.min_opacity
                unseen = self._unseen_mask(state, info["n_views"])
                if unseen is not None:
                    state["n_unseen_pruned"] += int((unseen & ~dead).sum())
                    dead = dead | unseen
                if bool(dead.any()) and not bool(dead.all()):
                    if self.torch_ops:
                        _relocate_torch(params, optimizers, dead, binoms, self.min_opacity)
                    else:
                        ops.relocate(params=params, optimizers=optimizers, state={}, mask=dead,
                                     binoms=binoms, min_opacity=self.min_opacity)
                    state["seen"][dead] = 1.0  # copies of live Gaussians
                    state["n_relocated"] += int(dead.sum())
                n = len(params["means"])
                n_new = max(0, min(self.cap_max, int(1.05 * n)) - n)
                if n_new:
                    if self.torch_ops:
                        _sample_add_torch(params, optimizers, n_new, binoms, self.min_opacity)
                    else:
                        ops.sample_add(params=params, optimizers=optimizers, state={}, n=n_new,
                                       binoms=binoms, min_opacity=self.min_opacity)
                    state["seen"] = torch.cat([state["seen"], state["seen"].new_ones(n_new)])
                    state["n_added"] += n_new
        if self.torch_ops:
            _inject_noise_torch(params, lr * self.noise_lr)
        else:
            ops.inject_noise_to_position(params=params, optimizers=optimizers, state={},
                                         scaler=lr * self.noise_lr)


def make_strategy(name: str, steps: int, num_gaussians: int, device: torch.device,
                  options: dict | None = None):
    """The strategy object for ``name`` ("default" | "mcmc"; "none" -> None) with
    :func:`strategy_defaults` updated by ``options`` (any field of the gsplat class or of the
    subclasses here); unknown option names raise :class:`Da3gsError`."""
    params = strategy_defaults(name, steps, num_gaussians)
    if name == "none":
        if options:
            raise Da3gsError(f"refine strategy options {sorted(options)} need a strategy "
                             "(default or mcmc), got none")
        return None
    cls = RefineDefaultStrategy if name == "default" else RefineMCMCStrategy
    fields = set(cls.__dataclass_fields__) - {"verbose", "key_for_gradient", "torch_ops"}
    unknown = set(options or {}) - fields
    if unknown:
        raise Da3gsError(f"refine strategy {name}: unknown options {sorted(unknown)}; "
                         f"expected some of {sorted(fields)}")
    params.update(options or {})
    if name == "mcmc":
        params["torch_ops"] = device.type != "cuda"
    for k in ("refine_every", "reset_every"):
        if k in params and int(params[k]) < 1:
            raise Da3gsError(f"refine strategy {name}: {k} must be >= 1, got {params[k]}")
    return cls(**params)


def parse_strategy_options(text: str | None) -> dict:
    """``"k=v,k=v"`` (CLI ``--refine-strategy-opt``) -> dict of ints / floats / bools."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise Da3gsError(f"--refine-strategy-opt: expected key=value[,key=value], got {item!r}")
        v = v.strip()
        if v.lower() in ("true", "false"):
            out[k.strip()] = v.lower() == "true"
            continue
        try:
            num = float(v)
        except ValueError:
            raise Da3gsError(f"--refine-strategy-opt {k.strip()}: expected a number, got {v!r}") from None
        if not math.isfinite(num):
            raise Da3gsError(f"--refine-strategy-opt {k.strip()}: expected a finite number, got {v!r}")
        out[k.strip()] = int(num) if num.is_integer() and "." not in v and "e" not in v.lower() else num
    return out
