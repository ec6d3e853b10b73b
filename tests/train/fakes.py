"""Small synthetic data for the engine tests (no procedural generator needed)."""

from __future__ import annotations

import torch

from da3gs.data.batch import ViewBatch


def synth_batch(B: int, V: int, H: int = 28, W: int = 28, gen: torch.Generator | None = None,
                cond: list[bool] | None = None) -> ViewBatch:
    """B samples of V views: smooth random images and depth, cameras translated along x."""
    g = gen
    img = torch.rand(B, V, 3, H // 7, W // 7, generator=g)
    img = torch.nn.functional.interpolate(img.flatten(0, 1), (H, W), mode="bilinear",
                                          align_corners=False).reshape(B, V, 3, H, W)
    base = 2.0 + torch.rand(B, V, 1, 1, generator=g)
    rx = torch.linspace(0, 1, W).reshape(1, 1, 1, W)
    ry = torch.linspace(0, 1, H).reshape(1, 1, H, 1)
    slope = 0.5 + torch.rand(B, V, 2, 1, 1, generator=g)
    depth = base * (1 + slope[:, :, 0] * rx + 0.5 * slope[:, :, 1] * ry)  # slanted planes
    c2w = torch.eye(4).repeat(B, V, 1, 1)
    c2w[..., 0, 3] = torch.arange(V).float() * 0.2 + 0.05 * torch.rand(B, V, generator=g)
    K = torch.tensor([[float(W), 0, W / 2], [0, float(W), H / 2], [0, 0, 1]]).repeat(B, V, 1, 1)
    pc = torch.tensor(cond) if cond is not None else torch.rand(B, generator=g) < 0.5
    return ViewBatch(images=img, depth=depth, valid=torch.ones(B, V, H, W, dtype=torch.bool),
                     c2w=c2w, K=K, pose_conditioned=pc, scene_ids=[f"s{i}" for i in range(B)])


class GlobalRngSource:
    """Endless batches drawn from the *global* torch RNG (tests RNG save/restore on resume)."""

    def __init__(self, B=2, V=2, H=28, W=28):
        self.shape = (B, V, H, W)

    def __iter__(self):
        return self

    def __next__(self) -> ViewBatch:
        return synth_batch(*self.shape)


def global_rng_source(cfg, rank=0, world_size=1, device="cpu"):
    return GlobalRngSource()


def sharded_source(cfg, rank=0, world_size=1, device="cpu"):
    """A fixed sequence of 4-sample batches (seeded generator), each rank taking its slice."""
    def it():
        g = torch.Generator().manual_seed(1234)
        while True:
            b = synth_batch(4, 2, gen=g, cond=[False, True, False, False])
            n = 4 // world_size
            idx = torch.arange(rank * n, (rank + 1) * n)
            from da3gs.train.objectives import take

            yield take(b, idx)
    return it()
