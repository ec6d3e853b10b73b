"""scripts/bench_sparse_attention.py runs on the CPU at a tiny size (speed and quality)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("bench_sparse_attention",
                                                  ROOT / "scripts" / "bench_sparse_attention.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_patterns():
    mod = _module()
    p = mod.parse_pattern("k8w2")
    assert (p.keyframe_every, p.window, p.num_keyframes) == (8, 2, None)
    p = mod.parse_pattern("n64w0")
    assert (p.num_keyframes, p.window) == (64, 0) and mod.pattern_name(p) == "n64w0"
    assert mod.pattern_name(None) == "full"
    with pytest.raises(Exception):
        mod.parse_pattern("k8")


def test_speed_tiny_cpu(tmp_path, capsys):
    mod = _module()
    out = tmp_path / "speed.json"
    res = mod.main(["speed", "--preset", "tiny", "--views", "8", "--height", "28", "--width", "42",
                    "--patterns", "k4w1", "n2w0", "--full-max-views", "8", "--device", "cpu",
                    "--json", str(out)])
    rows = res["rows"]
    assert [r["pattern"] for r in rows] == ["full", "k4w1", "n2w0"]
    assert all(r["time_s"] > 0 and "error" not in r for r in rows)
    assert rows[1]["impl"] == "chunked"
    assert json.loads(out.read_text())["rows"] == rows
    assert "| 8 | k4w1 | chunked |" in capsys.readouterr().out


def test_quality_tiny_cpu(tmp_path):
    mod = _module()
    res = mod.main(["quality", "--model", "random:tiny", "--real", "--procedural", "1",
                    "--views", "5", "--proc-height", "28", "--proc-width", "42",
                    "--process-res", "42", "--patterns", "k0w1", "--device", "cpu"])
    full, sparse = res["rows"]
    assert (full["pattern"], sparse["pattern"]) == ("full", "k0w1")
    for r in res["rows"]:
        assert 0 <= r["auc30"] <= 1 and r["abs_rel"] >= 0 and 0 <= r["delta1"] <= 1
    assert sparse["depth_diff"] > 0 and "depth_diff" not in full
