"""scripts/bench_train.py runs on the CPU (tiny config) and reports every phase."""

from __future__ import annotations

import importlib.util
from pathlib import Path



def test_bench_train_cpu_smoke(capsys, monkeypatch):
    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--config", "stage1-tiny", "--device", "cpu", "--steps", "1", "--warmup", "1",
              "--fixed-shape", "--profile", "--set", "data.batch_size=2",
              "data.pose_cond_prob=0.5"])
    out = capsys.readouterr().out
    for phase in mod.PHASES:
        assert f"\n{phase} " in out, phase
    assert "images/s:" in out and "aten::item" in out
