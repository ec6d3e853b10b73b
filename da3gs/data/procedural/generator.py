"""The procedural multi-view generator: scenes + cameras -> :class:`~da3gs.data.batch.ViewBatch`.

``sample`` draws B scenes and a camera set of V views for each, checks that the views overlap
(a low-resolution depth render: view 0's valid pixels re-projected into every other view must
land in frame, in front, and on the same surface -- for tabletop scenes, whose orbits go all
around, each view's pixels in the next view; sets failing are resampled), then renders at full
resolution in chunks of whole samples: exact z-depth, camera-frame normals, valid and sky
masks, and shaded images developed per view by :mod:`.photo` (defocus, motion blur,
vignetting, exposure, white balance, gamma, noise, JPEG; the depth is untouched by them). Lens
distortion bends the rendered rays, so depth and masks stay exact per pixel.

``ProceduralConfig.static`` selects the static path (fixed shapes, no host sync: :mod:`.static`)
and ``ProceduralConfig.graphs`` replays it from CUDA graphs (:class:`GraphedSampler`).
"""

from __future__ import annotations

import torch
from torch.profiler import record_function

from ..batch import ViewBatch
from .cameras import positions_ok, sample_cameras, sample_intrinsics
from .config import CAMERA_MODES, SCENE_KINDS, ProceduralConfig
from .primitives import const, maybe_compile, use_compile
from da3gs.geometry.rays import _camera_directions, ray_directions

from . import photo
from .photo import distort_directions

from .scene import PRIMITIVE_FIELDS, TABLETOP, Scene, _Rng, sample_scenes
from .shading import shade
from .static import Budget, LazySceneIds
from .trace import closest_hit, environment_hit

__all__ = ["ProceduralGenerator", "GraphedSampler", "render"]

#: Scene fields read by the cameras and the unshaded overlap render (besides the primitives').
_CAMERA_FIELDS = ("kind", "scale", "focus", "room", "ground_r", "dome_r", "env_prm", "sky_seed")


def render(scene: Scene, cfg: ProceduralConfig, c2w: torch.Tensor, K: torch.Tensor, H: int, W: int,
           shaded: bool = True, approx: bool = False, budget: Budget | None = None,
           distortion: torch.Tensor | None = None) -> dict:
    """Ray-cast S scenes from V cameras each.

    c2w: (S, V, 4, 4) OpenCV; K: (S, V, 3, 3) pixels of H x W. ``approx`` (unshaded only):
    tori and blends as their bounding spheres (fast; for the overlap check). ``budget``: the
    static path (fixed shapes, no host sync; :mod:`.static`). ``distortion``: (S, V) radial
    coefficients k of :func:`.photo.distort_directions` (the rays are bent; None or 0: pinhole
    rays, bit-identical). Returns a dict with ``depth``
    (S, V, H, W) z-depth (0 on sky), ``hit`` (S, V, H, W) bool and, if ``shaded``, ``rgb``
    (S, V, H, W, 3) in [0, 1] and ``normals`` (S, V, H, W, 3) camera-frame unit normals facing
    the camera (zeros on sky).
    """
    S, V = c2w.shape[:2]
    if distortion is None:
        d = ray_directions(c2w, K, H, W, check=False)
    else:  # as ray_directions, with bent camera-frame directions (still z = 1)
        dcam = distort_directions(_camera_directions(K, H, W, 0.5, torch.float32), distortion)
        d = dcam @ c2w[..., :3, :3].transpose(-1, -2)[..., None, :, :]
    d = d.reshape(S, V, H * W, 3)  # camera-frame z = 1
    dn = d.norm(dim=-1)
    du = d / dn[..., None]
    o = c2w[:, :, None, :3, 3]
    with record_function("procedural.primary"):
        t_env, env = environment_hit(scene, o, du, cfg)
        t, slot = closest_hit(scene, o, du, t_env.contiguous(), cfg, approx=approx and not shaded, budget=budget)
    env = torch.where(slot >= 0, -1, env)
    hit = (slot >= 0) | (env >= 0)
    out = {"depth": torch.where(hit, t / dn, 0.0).reshape(S, V, H, W), "hit": hit.reshape(S, V, H, W)}
    if shaded:
        with record_function("procedural.shade"):
            rgb, n_w, _ = shade(scene, cfg, o, du, t, slot, env, budget)
        n_c = n_w @ c2w[:, :, :3, :3]  # R^T n, as rows
        out["rgb"] = rgb.reshape(S, V, H, W, 3)
        out["normals"] = n_c.reshape(S, V, H, W, 3)
    return out


def _overlap_score(depth: torch.Tensor, hit: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                   chain: bool = False):
    """Co-visibility of view 0 (``chain``: of each view's predecessor) in the other views, from
    depth maps.

    depth, hit: (S, V, h, w); c2w, K: (S, V, 4, 4), (S, V, 3, 3). Returns (S,) the minimum over
    views j > 0 of the fraction of view i's valid pixels seen by view j on the same surface,
    i = 0 (or i = j - 1 with ``chain``).
    """
    S, V, h, w = depth.shape
    if V == 1:
        return torch.ones(S, device=depth.device)
    src = slice(0, V - 1) if chain else slice(0, 1)
    d0 = ray_directions(c2w[:, src], K[:, src], h, w, check=False).reshape(S, -1, h * w, 3)
    P = c2w[:, src, None, :3, 3] + depth[:, src].reshape(S, -1, h * w, 1) * d0  # (S, V-1 or 1, n, 3)
    Rj, tj = c2w[:, 1:, :3, :3], c2w[:, 1:, None, :3, 3]  # world -> camera j: R^T (P - t)
    pc = (P - tj) @ Rj  # (S, V-1, n, 3)
    z = pc[..., 2]
    uv = pc @ K[:, 1:].transpose(-1, -2)
    u, v = uv[..., 0] / z.clamp_min(1e-9), uv[..., 1] / z.clamp_min(1e-9)
    inb = (z > 1e-6) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    iu, iv = u.clamp(0, w - 1).long(), v.clamp(0, h - 1).long()
    flat = (iv * w + iu)
    dj = depth[:, 1:].reshape(S, V - 1, h * w).gather(-1, flat)
    hj = hit[:, 1:].reshape(S, V - 1, h * w).gather(-1, flat)
    same = hj & ((dj - z).abs() < 0.06 * z + 0.02)
    m0 = hit[:, src].reshape(S, -1, h * w)
    frac = (m0 & inb & same).sum(-1).float() / m0.sum(-1).clamp_min(1).float()
    return frac.amin(-1)


def _scene_id(tag: str):
    """(kind, mode, i) -> the scene id of sample i of a call tagged ``tag``."""
    return lambda k, m, i: f"procedural/{SCENE_KINDS[k]}/{CAMERA_MODES[m]}/{tag}-{i}"


def _mode_table(cfg: ProceduralConfig, device) -> torch.Tensor:
    """(kinds, modes) camera-mode weights: ``camera_modes`` times each kind's multipliers."""
    rows = [tuple(a * b for a, b in zip(cfg.camera_modes, m)) for m in cfg.kind_camera_modes]
    return const(f"modes{rows}", rows, torch.float32, (len(rows), len(CAMERA_MODES)), device)


class ProceduralGenerator:
    """Endless procedural multi-view scenes with exact depth, cameras, normals and masks.

    Args:
        config: :class:`ProceduralConfig` (defaults if None).
        device: where scenes are generated and returned ("cuda" or "cpu").
    Attributes:
        overflow: () long device tensor, items dropped by the static path's capacities over all
            calls so far (0 while every capacity held; reading it syncs).
        last_budget: the :class:`.static.Budget` of the last eager static call (statistics).
    """

    def __init__(self, config: ProceduralConfig | None = None, device: str | torch.device = "cpu"):
        self.config = config or ProceduralConfig()
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(self.config.seed)
        self._count = 0
        self._graphed: GraphedSampler | None = None
        self.overflow = torch.zeros((), dtype=torch.long, device=self.device)
        self.last_budget: Budget | None = None

    def _cameras(self, scene: Scene, mode: torch.Tensor, V: int, H: int, W: int, gen: torch.Generator,
                 budget: Budget | None = None):
        """Camera sets passing the position and overlap checks (the first best of ``camera_tries``).

        All tries are drawn first and checked in one low-resolution render of the scenes repeated
        ``camera_tries`` times (no host sync, a fixed number of ops)."""
        cfg = self.config
        S, T = scene.num, max(1, cfg.camera_tries)
        s = cfg.overlap_res / max(H, W)
        h, w = max(2, round(H * s)), max(2, round(W * s))
        scale = const(f"scale{w, h, W, H}", (w / W, h / H, 1.0), torch.float32, (3, 1), self.device)
        rep = (scene.select(torch.arange(S, device=self.device).repeat(T), _CAMERA_FIELDS + PRIMITIVE_FIELDS)
               if T > 1 else scene)
        mode_r = mode.repeat(T)
        c2w_f = sample_cameras(rep, cfg, mode_r, V, gen)  # (T * S, V, 4, 4), try-major
        K_f = sample_intrinsics(cfg, T * S, V, H, W, mode_r, gen)
        c2w, K = c2w_f.reshape(T, S, V, 4, 4), K_f.reshape(T, S, V, 3, 3)
        K_f = K_f * scale
        lr = render(rep, cfg, c2w_f, K_f, h, w, shaded=False, approx=True, budget=budget)
        # all-around tabletop orbits: the opposite views cannot see view 0, each view must see
        # its predecessor instead
        ov = torch.where(rep.kind == TABLETOP, _overlap_score(lr["depth"], lr["hit"], c2w_f, K_f, chain=True),
                         _overlap_score(lr["depth"], lr["hit"], c2w_f, K_f))
        val = lr["hit"].float().mean((2, 3)).amin(1)
        ok = positions_ok(rep, c2w_f)
        q = ok.float() * ((ov / max(cfg.min_overlap, 1e-6)).clamp(max=1) + (val / max(cfg.min_valid, 1e-6)).clamp(max=1))
        best = q.reshape(T, S).argmax(0)  # the first try with the best score
        si = torch.arange(S, device=self.device)
        return c2w[best, si], K[best, si]

    def _render(self, B: int, V: int, H: int, W: int, gen: torch.Generator, budget: Budget | None) -> dict:
        """One call's tensors: images (B, V, 3, H, W), depth / valid (B, V, H, W), c2w, K, normals
        (B, V, 3, H, W) and codes, the (2, B) scene kinds and camera modes (dynamic path: host
        lists, read early while the GPU queue is short; static path: a device tensor)."""
        cfg, dev = self.config, self.device
        r = _Rng(gen, dev)
        scene = sample_scenes(cfg, B, gen, dev)
        mode = r.choice_rows((B,), _mode_table(cfg, dev), scene.kind)
        codes = torch.stack([scene.kind, mode])
        if budget is None:
            codes = codes.tolist()  # the ids' one host sync
        with record_function("procedural.cameras"):
            c2w, K = self._cameras(scene, mode, V, H, W, gen, budget)
        # photometric per-view draws happen before rendering so chunking cannot change them
        expo = r.u((B, V, 1, 1, 1), *cfg.exposure)
        wb = 1 + r.u((B, V, 1, 1, 3), -cfg.white_balance, cfg.white_balance)
        gamma = r.u((B, V, 1, 1, 1), *cfg.gamma)
        sigma = r.u((B, V, 1, 1, 1), *cfg.noise_std)
        noise = torch.randn((B, V, H, W, 3), generator=gen, device=dev)
        fx = photo.draw(r, cfg, B, V, H, W)
        dist = photo.distortion_coeff(fx["distortion"], K, H, W) if cfg.distortion_prob > 0 else None
        per = max(1, cfg.max_chunk_rays // (V * H * W))
        parts = ([render(scene, cfg, c2w, K, H, W, budget=budget, distortion=dist)] if per >= B else
                 [render(scene.select(slice(i, i + per)), cfg, c2w[i:i + per], K[i:i + per], H, W, budget=budget,
                         distortion=None if dist is None else dist[i:i + per])
                  for i in range(0, B, per)])
        cat = lambda k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k]  # noqa: E731
        rgb, depth, hit, normals = cat("rgb"), cat("depth"), cat("hit"), cat("normals")
        # z-depth of the focus point in each view (the lens focuses there)
        zf = ((scene.focus[:, None] - c2w[..., :3, 3]) * c2w[..., :3, 2]).sum(-1).clamp_min(1e-3)
        img = photo.develop(rgb, depth, K, zf, (expo, wb, gamma, sigma, noise), fx, cfg,
                            tone_fn=maybe_compile(photo.tone, use_compile(cfg, rgb)))
        return {"images": img, "depth": depth, "valid": hit, "c2w": c2w, "K": K,
                "normals": normals.permute(0, 1, 4, 2, 3).contiguous(), "codes": codes}

    def render_static(self, B: int, V: int, H: int, W: int, gen: torch.Generator) -> dict:
        """The static path's tensors for one call (:meth:`_render` with a fresh budget; fixed
        shapes, no host sync: what :class:`GraphedSampler` captures), plus ``overflow`` (() long)."""
        cfg = self.config
        budget = Budget(cfg.static_capacity, cfg.static_min_capacity, self.device)
        out = self._render(B, V, H, W, gen, budget)
        out["overflow"] = budget.overflow
        self.last_budget = budget
        return out

    def _batch(self, out: dict, tag: str) -> ViewBatch:
        codes, fmt = out["codes"], _scene_id(tag)
        ids = (LazySceneIds(codes, fmt) if isinstance(codes, torch.Tensor) else
               [fmt(k, m, i) for i, (k, m) in enumerate(zip(*codes))])
        return ViewBatch(images=out["images"], depth=out["depth"], valid=out["valid"], c2w=out["c2w"], K=out["K"],
                         normals=out["normals"], sky=~out["valid"], scene_ids=ids)

    @torch.no_grad()
    def sample(self, batch_size: int, num_views: int, height: int, width: int, seed: int | None = None) -> ViewBatch:
        """B samples of V views at H x W.

        Args:
            seed: an int makes the whole batch reproducible (same tensors on the same device);
                None draws from the generator's own stream (with ``graphs`` on CUDA: the seed
                ``config.seed`` mixed with the number of samples drawn so far, see
                :class:`GraphedSampler`).
        Returns:
            ViewBatch with images (B, V, 3, H, W), depth / valid / sky (B, V, H, W), c2w
            (B, V, 4, 4), K (B, V, 3, 3), normals (B, V, 3, H, W), scene_ids (B strings; with
            ``static`` or ``graphs`` a :class:`.static.LazySceneIds`, read from the device when
            first used).
        """
        B, V, H, W = int(batch_size), int(num_views), int(height), int(width)
        if min(B, V, H, W) < 1:
            raise ValueError(f"sample: expected positive sizes, got B={B} V={V} H={H} W={W}")
        cfg, dev = self.config, self.device
        tag = f"s{self._count}" if seed is None else f"seed{seed}"
        if cfg.graphs and dev.type == "cuda":
            if self._graphed is None:
                self._graphed = GraphedSampler(self)
            out = self._graphed.replay(B, V, H, W, GraphedSampler.stream_seed(cfg.seed, self._count)
                                       if seed is None else int(seed))
        else:
            if seed is None:
                gen = self._gen
            else:
                gen = torch.Generator(device=dev)
                gen.manual_seed(int(seed))
            out = (self.render_static(B, V, H, W, gen) if cfg.static or cfg.graphs
                   else self._render(B, V, H, W, gen, None))
        self._count += B
        if "overflow" in out:
            self.overflow += out["overflow"]
        return self._batch(out, tag)


class GraphedSampler:
    """CUDA-graph replays of :meth:`ProceduralGenerator.render_static`, one graph per (B, V, H, W).

    The first call of a shape runs ``warmup`` eager static calls on a side stream (PyTorch's
    capture recipe; they also create the cached per-device constants and library handles), then
    captures one call with the sampler's own ``torch.Generator`` registered with the graph
    (``CUDAGraph.register_generator_state``). Every call then seeds that generator
    (``manual_seed``: the replay draws from Philox offset 0, exactly the numbers an eager call
    with a fresh generator of that seed draws, so a replay equals the eager static call of the
    same seed on the same device) and replays the graph. The outputs live in the graph's static
    buffers; :meth:`replay` returns clones (one device copy of the outputs, about
    4 * B * V * H * W * 7 bytes plus masks), so a returned batch stays valid across calls.
    One memory pool per shape (the static path's temporaries; the peak of one eager call).

    Args:
        generator: the :class:`ProceduralGenerator` (CUDA) whose static path is captured.
        warmup: eager warm-up calls before a capture.
    """

    def __init__(self, generator: ProceduralGenerator, warmup: int = 2):
        self.owner, self.warmup = generator, int(warmup)
        self.gen = torch.Generator(device=generator.device)
        self.graphs: dict[tuple[int, int, int, int], tuple[torch.cuda.CUDAGraph, dict]] = {}

    @staticmethod
    def stream_seed(seed: int, count: int) -> int:
        """The seed of a ``sample(seed=None)`` call: the config seed mixed with the number of
        samples drawn before (a host-side stream; no device read)."""
        return (int(seed) * 0x9E3779B97F4A7C15 + int(count) * 0xBF58476D1CE4E5B9 + 1) % (1 << 63)

    def _capture(self, B: int, V: int, H: int, W: int):
        dev, run = self.owner.device, self.owner.render_static
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for i in range(self.warmup):
                self.gen.manual_seed(i)
                run(B, V, H, W, self.gen)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.gen)
        with torch.cuda.graph(graph):
            out = run(B, V, H, W, self.gen)
        return graph, out

    def replay(self, B: int, V: int, H: int, W: int, seed: int) -> dict:
        """The static path's tensors (as :meth:`ProceduralGenerator.render_static`, cloned) of
        one call of seed ``seed``, from the graph of this shape (captured on first use)."""
        key = (B, V, H, W)
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key)
        graph, out = self.graphs[key]
        self.gen.manual_seed(seed)
        graph.replay()
        return {k: v.clone() for k, v in out.items()}
