"""``da3gs render|eval --gpus N`` and torchrun launches (context parallelism, issue 26): flag
errors are one line, exit 2, before anything loads; a render launched as 2 torchrun-style CPU
processes (gloo) writes what one process writes."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from da3gs.cli import main
from tests.apps.test_render_cli import _make_views

RENDER = ["render", "--device", "cpu", "-q", "--process-res", "70", "--model", "random:tiny-gs",
          "--no-video", "--no-colmap"]


@pytest.mark.parametrize("flags, message", [
    (["--gpus", "2"], "--gpus 2: this machine has 0 CUDA devices"),
    (["--gpus", "0"], "--gpus: expected a positive number of GPUs, got 0"),
    (["--gpus", "2", "--device", "cpu"], "--gpus 2: runs one process per CUDA device; drop --device cpu"),
])
@pytest.mark.parametrize("command", ["render", "eval"])
def test_gpus_flag_errors(tmp_path, capsys, monkeypatch, flags, message, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr("da3gs.models.loading.load_model", lambda *a, **k: pytest.fail("loaded"))
    args = (["render", "--views", str(tmp_path / "v")] if command == "render"
            else ["eval", "pose", "--scene", str(tmp_path / "s")])
    assert main(args + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"da3gs {command}: error: {message}"]


def test_gpus_against_torchrun_world(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["render", "--views", str(tmp_path / "v"), "--gpus", "2"]) == 2
    assert capsys.readouterr().err.strip() == (
        "da3gs render: error: --gpus 2: torchrun started 3 processes; pass --gpus 3 or leave "
        "--gpus out")


def _rank(rank: int, world: int, port: int, argv: list[str]) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    assert main(argv) == 0


def test_render_over_two_processes_equals_one(tmp_path, monkeypatch):
    """As ``torchrun --nproc-per-node 2 -m da3gs render --device cpu ...`` would run it."""
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    paths = _make_views(tmp_path / "v", n=5)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(RENDER + ["--views", str(tmp_path / "v"), "--out", str(one)]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank, args=(2, port, RENDER + ["--views", str(tmp_path / "v"), "--out", str(two)]),
             nprocs=2)
    a, b = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert b["views"] == a["views"] == 5 and b["processes"] == 2 and "processes" not in a
    for p in paths:
        da, db = (np.load(d / "depth" / f"{p.stem}.npy") for d in (one, two))
        np.testing.assert_allclose(db, da, rtol=1e-4, atol=1e-5)
    ca, cb = (json.loads((d / "cameras.json").read_text()) for d in (one, two))
    assert [c["name"] for c in cb] == [c["name"] for c in ca]
    # pruning and merging are thresholds: rounding-level differences may flip a Gaussian or two
    n_a, n_b = a["gaussians"]["final"], b["gaussians"]["final"]
    assert n_a > 0 and abs(n_b - n_a) <= max(2, n_a // 1000), (n_a, n_b)
