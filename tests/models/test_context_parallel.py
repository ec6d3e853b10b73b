"""Context-parallel inference (issue 26): a forward spread over 2 and 3 CPU processes (gloo)
equals the single-process forward to fp32 rounding, uneven view splits included, pose-free
(reference-view selection active, the reference on a rank other than 0) and pose-conditioned,
depth, rays, cameras and Gaussians compared."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from da3gs.errors import Da3gsError
from da3gs.nn.context_parallel import ViewShard, split_views

H, W = 42, 28  # 3 x 2 patches of the tiny presets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _poses(B: int, V: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """w2c ``(B, V, 4, 4)`` (rotations about y, translations) and K ``(B, V, 3, 3)``."""
    a = torch.rand(B, V, generator=g) * 0.6
    c, s = a.cos(), a.sin()
    w2c = torch.eye(4).repeat(B, V, 1, 1)
    w2c[..., 0, 0], w2c[..., 0, 2], w2c[..., 2, 0], w2c[..., 2, 2] = c, s, -s, c
    w2c[..., :3, 3] = torch.randn(B, V, 3, generator=g)
    K = torch.tensor([[30.0, 0, W / 2], [0, 30.0, H / 2], [0, 0, 1]]).repeat(B, V, 1, 1)
    return w2c, K


#: (name, preset, B, V, posed, pose_mask, ref strategy, GS head)
CASES = [
    ("free-5", "tiny-gs", 1, 5, False, None, "saddle_balanced", True),
    ("free-7-middle", "tiny-gs", 1, 7, False, None, "middle", True),  # reference view 3
    ("free-4-middle", "tiny", 1, 4, False, None, "middle", False),  # view 2: on rank 1
    ("posed-7", "tiny-gs", 1, 7, True, None, "saddle_balanced", True),
    ("mixed-5", "tiny", 2, 5, True, (True, False), "middle", False),  # pose_mask: one of each
    ("free-2x5-sim-range", "tiny", 2, 5, False, None, "saddle_sim_range", False),
]


def _compare(ref: dict, got: dict, what: str) -> None:
    assert sorted(ref) == sorted(got), (what, sorted(ref), sorted(got))
    for k in ref:
        if k == "ref_view":
            assert torch.equal(ref[k], got[k]), (what, ref[k], got[k])
        else:  # fp32 rounding: only the summation order of the cross-view attention differs
            torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=f"{what}: {k}")


def _worker(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    from da3gs.models.context_parallel import context_parallel_forward, gather_outputs, make_shard
    from da3gs.models.loading import load_model
    from da3gs.models.net import build_net

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        off_rank0 = False  # a reference view held by another rank than 0
        for name, preset, B, V, posed, pose_mask, strategy, gs in CASES:
            torch.manual_seed(0)  # the same weights and inputs on every rank
            net = build_net(preset).eval()
            g = torch.Generator().manual_seed(1)
            x = torch.randn(B, V, 3, H, W, generator=g)
            ext, K = _poses(B, V, g) if posed else (None, None)
            mask = None if pose_mask is None else torch.tensor(pose_mask)
            with torch.no_grad():
                ref = net(x, ext, K, ref_view_strategy=strategy, infer_gs=gs, pose_mask=mask)
                shard = make_shard(V)
                assert shard.counts == split_views(V, world)
                local = context_parallel_forward(net, x[:, shard.local_slice()], shard, ext, K,
                                                 ref_view_strategy=strategy, infer_gs=gs) \
                    if mask is None else net(x[:, shard.local_slice()], ext, K,
                                             ref_view_strategy=strategy, infer_gs=gs,
                                             pose_mask=mask, shard=shard)
                got = gather_outputs(local, shard)
            if rank == 0:
                _compare(ref, got, f"{name} over {world}")
                if "ref_view" in ref:
                    off_rank0 |= bool((ref["ref_view"] >= shard.counts[0]).any())
            else:
                assert got is None
        assert off_rank0 or rank != 0

        # the Python API: images in, a Prediction with Gaussians on rank 0
        torch.manual_seed(0)
        model = load_model("random:tiny-gs")
        g = torch.Generator().manual_seed(2)
        images = torch.rand(5, 3, H, W, generator=g)
        one = model.infer(images, process_res=W, infer_gs=True)
        cp = model.infer(images, process_res=W, infer_gs=True,
                         process_group=dist.group.WORLD)
        if rank == 0:
            assert cp.ref_view == one.ref_view
            for k in ("depth", "depth_conf", "rays", "ray_conf", "c2w", "K"):
                torch.testing.assert_close(getattr(cp, k), getattr(one, k), rtol=1e-4,
                                           atol=1e-5, msg=k)
            assert torch.equal(cp.gaussians.view, one.gaussians.view)
            for k in ("means", "quats", "scales", "opacities", "sh", "conf"):
                torch.testing.assert_close(getattr(cp.gaussians, k), getattr(one.gaussians, k),
                                           rtol=1e-4, atol=1e-5, msg=f"gaussians.{k}")
        else:
            assert cp is None
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_context_parallel_equals_one_process(world):
    mp.spawn(_worker, args=(world, _free_port()), nprocs=world, join=True)


def test_split_views():
    assert split_views(5, 2) == (3, 2)
    assert split_views(5, 3) == (2, 2, 1)
    assert split_views(7, 3) == (3, 2, 2)
    assert sum(split_views(8192, 8)) == 8192
    with pytest.raises(Da3gsError, match="at least one view"):
        split_views(2, 3)
    s = ViewShard((2, 2, 1), 2)
    assert (s.offset, s.local_views, s.num_views, s.local_slice()) == (4, 1, 5, slice(4, 5))


def test_refusals_before_any_collective():
    """Bad arguments fail at once with one clear message (no process group needed)."""
    from da3gs.models.context_parallel import context_parallel_forward
    from da3gs.models.net import build_net

    net = build_net("tiny").eval()
    shard = ViewShard((3, 2), 1)
    with pytest.raises(Da3gsError, match=r"expected \(B, 2, 3, H, W\)"):
        context_parallel_forward(net, torch.zeros(1, 3, 3, H, W), shard)
    with pytest.raises(Da3gsError, match="every view's are needed"):
        context_parallel_forward(net, torch.zeros(1, 2, 3, H, W), shard,
                                 torch.eye(4).repeat(1, 2, 1, 1), torch.eye(3).repeat(1, 2, 1, 1))
    with pytest.raises(Da3gsError, match="any-view"):
        context_parallel_forward(build_net("tiny-nested"), torch.zeros(1, 2, 3, H, W), shard)
