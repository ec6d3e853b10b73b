"""scripts/bench_inference.py: runs on the CPU with the small preset at a tiny size; its accuracy
measure finds known rotations and direction changes."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from tests.official_ref import requires_official

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("bench_inference", ROOT / "scripts" / "bench_inference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rot_z(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]],
                        dtype=torch.float64)


def test_accuracy_measures_known_errors():
    mod = _module()
    V = 3
    R = torch.eye(3, dtype=torch.float64).repeat(V, 1, 1)
    C = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [0.0, 2, 0]], dtype=torch.float64)  # camera centres
    w2c = torch.cat([R, -(R @ C[..., None])], dim=-1)[None]
    depth = torch.rand(1, V, 4, 5, dtype=torch.float64) + 1
    ref = {"depth": depth, "depth_conf": depth, "extrinsics": w2c}
    out = {k: v.clone() for k, v in ref.items()}
    assert mod.accuracy(out, ref) == {"depth": 0.0, "depth_conf": 0.0, "rot_deg": 0.0, "trans_dir_deg": 0.0}
    out["depth"] = depth * 1.01
    out["extrinsics"] = w2c.clone()
    Rp = _rot_z(0.05)
    out["extrinsics"][0, 1, :, :3] = Rp  # view 1 turned by 0.05 deg, its centre kept
    out["extrinsics"][0, 1, :, 3:] = -(Rp @ C[1, :, None])
    C2 = _rot_z(0.3) @ C[2]  # view 2's centre turned by 0.3 deg about the origin
    out["extrinsics"][0, 2, :, 3:] = -C2[:, None]
    err = mod.accuracy(out, ref)
    assert err["depth"] == pytest.approx(0.01, rel=1e-6)
    assert err["rot_deg"] == pytest.approx(0.05, rel=1e-6)
    assert err["trans_dir_deg"] == pytest.approx(0.3, rel=1e-6)
    assert not mod._passes(err) and mod._passes({"depth": 1e-3, "rot_deg": 0.05})


@requires_official
def test_bench_inference_cpu_small(tmp_path, capsys):
    """The whole run on the CPU: the official small network written as the release, loaded by
    da3gs; fp32 da3gs equals the official fp32 within the bounds; bf16 rows are timed and
    compared with the official bf16 output."""
    mod = _module()
    js = tmp_path / "inf.json"
    rc = mod.main(["--presets", "small", "--views", "1", "2", "--height", "28", "--width", "42",
                   "--precisions", "fp32", "bf16", "--repeats", "1", "--warmup", "0", "--device", "cpu",
                   "--json", str(js)])
    res = json.loads(js.read_text())
    rows = res["rows"]
    assert [r["views"] for r in rows] == [1, 2] and res["bounds"]["rot_deg"] == 0.1
    for r in rows:
        assert r["da3gs_fp32_ok"] and r["da3gs_fp32_err"]["depth"] < 1e-4
        assert r["official_s"] > 0 and r["da3gs_bf16_s"] > 0 and r["da3gs_fp32_s"] > 0
        assert r["da3gs_bf16_vs_official_same_precision"]["depth"] < 1e-2
    assert rc == (0 if all(r["da3gs_bf16_ok"] for r in rows) else 1)
    out = capsys.readouterr().out
    assert out.count("\n| small | ") == 2 and "da3gs bf16 err, within bounds" in out
