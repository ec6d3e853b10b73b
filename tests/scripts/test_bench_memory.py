"""scripts/bench_memory.py on the CPU at a tiny size: each configuration runs in a subprocess and
reports a peak; the chunked configuration really runs the row-chunked blocks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))


def test_tiny_run(tmp_path, capsys):
    import bench_memory

    out = tmp_path / "mem.json"
    rc = bench_memory.main(["--preset", "tiny", "--views", "3", "--height", "28", "--width", "42",
                            "--device", "cpu", "--configs", "plain", "chunked", "--chunk-rows", "4",
                            "--json", str(out)])
    rows = json.loads(out.read_text())
    assert rc == 0 and [r["config"] for r in rows] == ["plain", "chunked"]
    assert all("error" not in r and r["peak_gib"] > 0 and r["depth_device"] == "cpu" for r in rows)
    assert "| tiny | 3 | chunked |" in capsys.readouterr().out


def test_child_uses_the_chunked_blocks(monkeypatch):
    import bench_memory
    from da3gs.nn.transformer import Block

    calls = []
    orig = Block._forward_chunked
    monkeypatch.setattr(Block, "_forward_chunked", lambda self, *a: calls.append(1) or orig(self, *a))
    cfg = {"preset": "tiny", "views": 2, "height": 28, "width": 42, "device": "cpu", "chunked": True,
           "fast": False, "offload": False, "chunk_rows": 4}
    try:
        res = bench_memory._child(cfg)
    finally:
        Block.chunk_rows = 1 << 18
    assert calls and res["seconds"] > 0
