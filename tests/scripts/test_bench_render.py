"""scripts/bench_render.py's torch rows on the CPU: a `da3gs render` output folder as the scene,
one row per rasteriser tile size, and a clear error for a folder that is not such an output."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))


def _render_output(folder: Path, n: int = 300, frames: int = 3) -> Path:
    from da3gs.io.cameras import write_cameras_json
    from da3gs.io.ply import write_ply
    from da3gs.render.sh import rgb_to_sh0
    from da3gs.types import Gaussians

    g = torch.Generator().manual_seed(0)
    means = torch.rand(n, 3, generator=g) * torch.tensor([2.0, 1.5, 1.0]) - torch.tensor([1.0, 0.75, -2.0])
    gs = Gaussians(means=means, quats=torch.randn(n, 4, generator=g),
                   scales=0.02 + 0.03 * torch.rand(n, 3, generator=g),
                   opacities=0.2 + 0.7 * torch.rand(n, generator=g),
                   sh=rgb_to_sh0(torch.rand(n, 1, 3, generator=g)))
    folder.mkdir()
    write_ply(folder / "gaussians.ply", gs)
    c2w = torch.eye(4, dtype=torch.float64).repeat(frames, 1, 1)
    c2w[:, 0, 3] = torch.linspace(-0.1, 0.1, frames, dtype=torch.float64)
    K = torch.tensor([[40.0, 0, 24], [0, 40.0, 16], [0, 0, 1]], dtype=torch.float64).repeat(frames, 1, 1)
    write_cameras_json(folder / "video_cameras.json", c2w, K, [(32, 48)] * frames,
                       [f"frame_{i:04d}" for i in range(frames)])
    return folder


def test_output_scene_rows_per_tile(tmp_path, capsys):
    import bench_render

    out = _render_output(tmp_path / "run")
    bench_render.main(["--skip-gsplat", "--torch-output", str(out), "--torch-frames", "2",
                       "--torch-tiles", "auto", "4", "8", "--torch-repeats", "1", "--backward",
                       "--torch-scale", "1.5"])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| torch tile")]
    assert [r.split(" | ")[0] for r in rows] == ["| torch tile auto", "| torch tile 4", "| torch tile 8",
                                                "| torch tile auto fwd+bwd", "| torch tile 4 fwd+bwd",
                                                "| torch tile 8 fwd+bwd"]
    assert all("run (2 video cameras) | 300 | 72x48 |" in r for r in rows)
    assert all(int(r.rstrip(" |").rsplit("| ", 1)[1].replace(",", "")) > 0 for r in rows)  # visible


def test_output_scene_through_the_api(tmp_path, capsys):
    import bench_render

    out = _render_output(tmp_path / "run")
    bench_render.main(["--skip-gsplat", "--torch-output", str(out), "--torch-repeats", "1"])
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| torch |")]
    assert len(rows) == 1 and "run (3 video cameras)" in rows[0]


def test_not_a_render_output(tmp_path, capsys):
    import bench_render

    out = _render_output(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        bench_render.main(["--skip-gsplat", "--torch-output", str(out), "--torch-tiles", "four"])
    assert e.value.code == 2 and "--torch-tiles: expected positive integers or 'auto'" in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:
        bench_render.main(["--skip-gsplat", "--torch-output", str(tmp_path / "empty")])
    assert e.value.code == 2
    assert "gaussians.ply not found" in capsys.readouterr().err
