"""README's Python API example for Gaussians runs as written (bundled `mini`, CPU)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gaussians_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "prune_gaussians" in b and "write_ply" in b]
    assert len(found) == 1, "README: expected one Python example with prune_gaussians and write_ply"
    return found[0]


def test_readme_gaussians_example(tmp_path, monkeypatch):
    code = _gaussians_example()
    monkeypatch.chdir(tmp_path)
    os.symlink(ROOT / "examples", tmp_path / "examples")
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own README
    pred, g, view = ns["pred"], ns["g"], ns["view"]
    H, W = ns["H"], ns["W"]
    assert 0 < len(g) <= len(pred.gaussians) == len(ns["files"]) * H * W
    assert view.color.shape == (1, H, W, 3) and view.depth.shape == (1, H, W, 1)
    assert float(view.alpha.mean()) > 0.5  # the first input view is covered by its own splats

    from da3gs.io.ply import read_ply

    back = read_ply(tmp_path / "scene.ply")
    assert len(back) == len(g)
    assert back.means.numpy() == pytest.approx(g.means.detach().cpu().numpy(), abs=1e-6)
