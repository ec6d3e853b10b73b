"""scripts/bench_stage2.py runs on the CPU (tiny config) and compares both implementations."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def test_bench_stage2_cpu_smoke(capsys):
    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_stage2.py"
    spec = importlib.util.spec_from_file_location("bench_stage2", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--config", "stage2-tiny", "--device", "cpu", "--pool", "2", "--passes", "1",
                     "--lpips", "off", "--set", "data.batch_size=2", "data.pose_cond_prob=0.5"])
    assert [r["impl"] for r in rows] == ["old", "new"]
    assert all(r["images_per_s"] > 0 and r["images_per_step"] == 6 for r in rows)
    assert abs(rows[0]["first_loss"] - rows[1]["first_loss"]) < 1e-2 * rows[0]["first_loss"]
    out = capsys.readouterr().out
    assert "stage2.batched=False" in out and "stage2.batched=True" in out and "images/s" in out
