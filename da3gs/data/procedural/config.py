"""Configuration of the procedural multi-view scene generator."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SCENE_KINDS", "CAMERA_MODES", "TEXTURE_KINDS", "ProceduralConfig"]

#: Scene kinds: a closed room box; an open ground plane under a sky; an object-centred
#: cluster on a ground inside a textured dome backdrop; an object on a bright table (or a white
#: studio sweep) filmed all around at close range; a room with furniture, clutter, pictures and
#: rugs; a street between building façades under a sky (see :mod:`.scene`).
SCENE_KINDS = ("room", "ground_sky", "backdrop", "tabletop", "furnished_room", "facade")
#: Camera modes (see :mod:`.cameras`).
CAMERA_MODES = ("orbit", "forward", "walkthrough", "stereo")
#: Object-space texture kinds (see :mod:`.textures`): the first five are the original solid
#: textures; then near-uniform "plain", periodic wallpaper motifs, woven fabric (plaid), brick,
#: façades (windows over plaster or brick) and wood planks.
TEXTURE_KINDS = ("fbm", "dead_leaves", "stripes", "checker", "color_field", "plain", "wallpaper", "fabric", "brick",
                 "facade", "wood")


@dataclass
class ProceduralConfig:
    """Everything the generator randomises, with its ranges.

    Probabilities are relative weights (normalised internally). Lengths are in scene units
    (roughly metres); angles in degrees.

    Attributes:
        scene_kinds: weights of ``SCENE_KINDS`` in order (room, ground_sky, backdrop, tabletop,
            furnished_room, facade); three weights (the original kinds) are accepted and leave
            the added kinds out.
        camera_modes: weights of ``CAMERA_MODES`` in order (orbit, forward, walkthrough, stereo).
        kind_camera_modes: per scene kind, multipliers of ``camera_modes`` (the mode of a scene of
            kind k is drawn with weights ``camera_modes[m] * kind_camera_modes[k][m]``): ones for
            the original kinds, mostly orbits for tabletop, mostly walkthroughs for furnished
            rooms, walkthroughs and forward-facing sets for façades. Rows missing at the end are
            ones.
        texture_kinds: weights of ``TEXTURE_KINDS`` for primitives and the environment surfaces
            of the original kinds (the added kinds choose their environment's textures from
            their own tables, :data:`.scene.ENV_TEXTURES`); five weights (the original
            textures) are accepted and leave the added textures out.
        num_primitives: inclusive range of analytic primitives per scene (at most 24, the number
            of slots: 5 spheres, 5 boxes, 4 cylinders, 3 quads, 3 tori, 4 SDF blends). Tabletop
            scenes have their own count (one object of 1-5 parts and 0-3 small items); furnished
            rooms keep each box (furniture) with probability 0.85 and each quad (picture, rug)
            with 0.7, the other slots by this count.
        fov_deg: range of the horizontal-or-vertical field of view (of the longer image side);
            ``fx = fy`` follows from it.
        focal_jitter: relative per-view jitter of the focal length around the sample's focal.
        principal_jitter: standard deviation of the principal point offset, in units of the
            image side (clipped to 3 sigma).
        num_lights: inclusive range of lights (1-2), each casting shadow rays.
        ambient: range of the ambient term (linear light) of the original kinds (furnished
            rooms: 0.05 more; façades: 0.15-0.35, sky light).
        tabletop_ambient: range of the ambient term of tabletop scenes (high-key lighting: with a
            near-white table and walls, most of the background is close to white).
        exposure: range of the per-view exposure multiplier (applied after shading).
        white_balance: maximum per-channel relative deviation of the per-view colour gain.
        gamma: range of the per-view gamma factor: linear shading is encoded as ``x ** (gamma / 2.2)``.
        noise_std: range of the per-view Gaussian pixel noise standard deviation.
        vignetting_prob, vignetting: probability per view of a vignette, and the range of its
            darkening at the image corners (relative; a smooth ``1 - a r^2 ...`` fall-off with the
            distance r from the principal point, applied in linear light).
        defocus_prob, defocus: probability per view of defocus blur, and the range of the blur
            (Gaussian sigma) of points at infinity, as a fraction of the longer image side. The
            camera focuses on the scene's focus point; a pixel at z-depth z is blurred by
            ``sigma * |1 - z_focus / z|`` (thin lens), capped at ``sigma`` (sky: ``sigma``).
        motion_blur_prob, motion_blur: probability per view of linear motion blur, and the range
            of its length as a fraction of the longer image side (random direction).
        jpeg_prob, jpeg_quality: probability per view of JPEG-like compression (YCbCr, 4:2:0
            chroma, 8 x 8 DCT quantised with the IJG tables scaled to a quality drawn from the
            range), computed in torch on the device.
        distortion_prob, distortion: probability per view of radial lens distortion and the range
            of its displacement at the image corner, relative to the corner's distance from the
            principal point (positive: barrel, negative: pincushion). Rendered exactly: the rays
            themselves are bent, so depth, normals and masks stay exact per pixel; ``K`` is then
            the pinhole approximation of the distorted camera (see docs/procedural.md).
        max_march_steps: sphere-tracing steps for tori and SDF blends (primary and shadow rays).
        march_eps: sphere-tracing hit tolerance relative to the distance travelled.
        min_overlap: fraction of view 0's (sub-sampled) valid pixels that must be seen, in
            front and not occluded, by every other view; camera sets below are resampled.
        min_valid: fraction of each view's pixels that must hit a surface (not sky).
        overlap_res: side of the low-resolution depth render used for the overlap check.
        camera_tries: resampling rounds for camera sets failing the checks (the best set is
            kept if none passes).
        stereo_baseline: range of stereo baselines relative to the distance to the focus.
        max_chunk_rays: rays traced per chunk (bounds memory; whole samples per chunk).
        compile: ``torch.compile`` the dense kernels (analytic intersections, sphere-tracing
            steps, surface attributes and textures, shading) on CUDA; off by default (ignored on
            the CPU; any compile error falls back to eager with a warning). Measured on an H200
            (2026-11-29) the first compiled call did not finish within 200 s, and a training
            run's varying shapes spent 148 s compiling in 8 steps, so eager is the default.
        static: the static path of ``sample``: fixed shapes and no host sync (every compaction
            is a fixed-capacity selection, the march runs exactly ``max_march_steps`` steps,
            ``scene_ids`` are read from the device only when first used), so the call is one
            fixed sequence of kernels per (B, V, H, W) that a CUDA graph can capture. Same
            outputs as the default path while no capacity overflows (see :mod:`.static`).
        graphs: on CUDA, capture the static path once per (B, V, H, W) in a CUDA graph and
            replay it (:class:`.generator.GraphedSampler`); implies ``static``. On the CPU:
            the static path, eager.
        static_capacity: multiplies the static path's capacities (:data:`.static.CAPACITY`,
            expected items per ray with margin); items beyond a capacity are dropped and counted
            (``ProceduralGenerator.overflow``).
        static_min_capacity: added to every capacity of the static path (calls this small are
            dense, hence exact).
        seed: seed of the generator's own RNG stream (used when ``sample(seed=None)``).
    """

    scene_kinds: tuple[float, ...] = (0.14, 0.13, 0.1, 0.25, 0.23, 0.15)
    camera_modes: tuple[float, float, float, float] = (0.3, 0.25, 0.25, 0.2)
    kind_camera_modes: tuple[tuple[float, float, float, float], ...] = (
        (1.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0),
        (3.0, 0.5, 0.3, 0.5), (0.6, 0.8, 2.5, 0.6), (0.6, 1.2, 2.0, 0.8))
    texture_kinds: tuple[float, ...] = (0.15, 0.12, 0.12, 0.09, 0.12, 0.1, 0.08, 0.08, 0.05, 0.02, 0.07)
    num_primitives: tuple[int, int] = (4, 24)
    fov_deg: tuple[float, float] = (45.0, 90.0)
    focal_jitter: float = 0.03
    principal_jitter: float = 0.02
    num_lights: tuple[int, int] = (1, 2)
    ambient: tuple[float, float] = (0.06, 0.2)
    tabletop_ambient: tuple[float, float] = (0.3, 0.6)
    exposure: tuple[float, float] = (0.7, 1.3)
    white_balance: float = 0.08
    gamma: tuple[float, float] = (0.9, 1.1)
    noise_std: tuple[float, float] = (0.0, 0.02)
    vignetting_prob: float = 0.4
    vignetting: tuple[float, float] = (0.1, 0.45)
    defocus_prob: float = 0.25
    defocus: tuple[float, float] = (0.002, 0.008)
    motion_blur_prob: float = 0.15
    motion_blur: tuple[float, float] = (0.004, 0.02)
    jpeg_prob: float = 0.4
    jpeg_quality: tuple[float, float] = (35.0, 92.0)
    distortion_prob: float = 0.15
    distortion: tuple[float, float] = (-0.03, 0.03)
    max_march_steps: int = 40
    march_eps: float = 2e-4
    min_overlap: float = 0.3
    min_valid: float = 0.3
    overlap_res: int = 24
    camera_tries: int = 4
    stereo_baseline: tuple[float, float] = (0.04, 0.15)
    max_chunk_rays: int = 1 << 24
    compile: bool = False
    static: bool = False
    graphs: bool = False
    static_capacity: float = 1.0
    static_min_capacity: int = 4096
    seed: int = 0

    def __post_init__(self):
        lo, hi = self.num_primitives
        if not (1 <= lo <= hi <= 24):
            raise ValueError(f"num_primitives: expected 1 <= lo <= hi <= 24, got {self.num_primitives}")
        # the original kinds and textures alone: their weights, the added ones 0
        if len(self.scene_kinds) == 3:
            self.scene_kinds = tuple(self.scene_kinds) + (0.0,) * (len(SCENE_KINDS) - 3)
        if len(self.texture_kinds) == 5:
            self.texture_kinds = tuple(self.texture_kinds) + (0.0,) * (len(TEXTURE_KINDS) - 5)
        for name, n in (("scene_kinds", len(SCENE_KINDS)), ("camera_modes", len(CAMERA_MODES)),
                        ("texture_kinds", len(TEXTURE_KINDS))):
            w = tuple(float(x) for x in getattr(self, name))
            if len(w) != n or min(w) < 0 or sum(w) <= 0:
                raise ValueError(f"{name}: expected {n} non-negative weights with a positive sum, got {w}")
            setattr(self, name, w)
        rows = [tuple(float(x) for x in r) for r in self.kind_camera_modes]
        rows += [(1.0,) * len(CAMERA_MODES)] * (len(SCENE_KINDS) - len(rows))
        if len(rows) != len(SCENE_KINDS) or any(len(r) != len(CAMERA_MODES) or min(r) < 0 for r in rows):
            raise ValueError(f"kind_camera_modes: expected up to {len(SCENE_KINDS)} rows of {len(CAMERA_MODES)} "
                             f"non-negative multipliers, got {self.kind_camera_modes}")
        for k, r in enumerate(rows):
            if self.scene_kinds[k] > 0 and sum(a * b for a, b in zip(r, self.camera_modes)) <= 0:
                raise ValueError(f"kind_camera_modes: no camera mode left for scene kind {SCENE_KINDS[k]}")
        self.kind_camera_modes = tuple(rows)
        for name in ("vignetting", "defocus", "motion_blur", "jpeg_quality", "distortion"):
            p, (lo, hi) = getattr(self, f"{name}_prob" if name != "jpeg_quality" else "jpeg_prob"), getattr(self, name)
            if not (0.0 <= p <= 1.0 and lo <= hi):
                raise ValueError(f"{name}: expected a probability in [0, 1] and lo <= hi, got {p}, {(lo, hi)}")
            setattr(self, name, (float(lo), float(hi)))
        if self.defocus[0] < 0 or self.motion_blur[0] < 0 or self.vignetting[0] < 0 or self.vignetting[1] >= 1:
            raise ValueError("defocus, motion_blur: expected non-negative ranges; vignetting within [0, 1)")
        if not (1.0 <= self.jpeg_quality[0] and self.jpeg_quality[1] <= 100.0):
            raise ValueError(f"jpeg_quality: expected a range within [1, 100], got {self.jpeg_quality}")
        if max(abs(x) for x in self.distortion) >= 0.3:
            raise ValueError(f"distortion: expected a mild range (|x| < 0.3), got {self.distortion}")
        if not (1 <= self.num_lights[0] <= self.num_lights[1] <= 2):
            raise ValueError(f"num_lights: expected a range within [1, 2], got {self.num_lights}")
        if not (0 < self.fov_deg[0] <= self.fov_deg[1] < 170):
            raise ValueError(f"fov_deg: expected 0 < lo <= hi < 170, got {self.fov_deg}")
        if self.max_march_steps < 1:
            raise ValueError("max_march_steps must be >= 1")
        if self.static_capacity <= 0 or self.static_min_capacity < 0:
            raise ValueError(f"static_capacity must be > 0 and static_min_capacity >= 0, got "
                             f"{self.static_capacity}, {self.static_min_capacity}")
