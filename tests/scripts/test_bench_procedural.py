"""scripts/bench_procedural.py on the CPU: every mode, op counts and capacity statistics at a tiny size."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))


def test_bench_procedural_cpu_smoke(capsys):
    import bench_procedural

    bench_procedural.main(["--device", "cpu", "--modes", "eager", "static", "graphed", "--sizes", "1x2",
                           "--res", "16", "16", "--repeats", "1", "--warmup", "0", "--count-ops", "1x2",
                           "--capacity-stats", "1x2", "--stat-calls", "1"])
    out = capsys.readouterr().out
    assert "| graphed | 1x2 | 2 |" in out and "| static | 1x2 | 2 |" in out
    assert "graphed vs eager static, 1x2 seed 0: max |diff| 0," in out
    assert "| closest/box |" in out
    # the static modes dispatch no host sync (nonzero, item, tolist)
    rows = [r for r in out.splitlines() if r.startswith(("| static | 1x2 at", "| graphed | 1x2 at"))]
    assert len(rows) == 2 and all(r.split("|")[5].strip() == "0" for r in rows), rows
