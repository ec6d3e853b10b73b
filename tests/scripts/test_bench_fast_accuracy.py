"""scripts/bench_fast_accuracy.py: exact vs fast path of a trained model on a real scene, the CUDA
precisions emulated on the CPU (bf16 autocast)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
ICL = ROOT.parent / "shared" / "data" / "icl_nuim_livingroom_rgbd5"


def test_emulation_maps_the_cuda_precisions_and_restores():
    import bench_fast_accuracy as b
    from da3gs.models.model import DA3Model

    model = DA3Model("tiny")
    orig = DA3Model._precision
    with b._cpu_bf16_precisions():
        ctx, fast = model._precision("fast")
        assert isinstance(ctx, torch.autocast) and fast is True
        assert model._precision("exact")[1] is False and model._precision("auto")[1] is True
    assert DA3Model._precision is orig


@pytest.mark.skipif(not ICL.is_dir(), reason="shared ICL-NUIM scene not present")
def test_icl_fast_within_half_a_db_of_exact(tmp_path, capsys):
    import bench_fast_accuracy as b

    out = tmp_path / "acc.json"
    rc = b.main(["--scenes", str(ICL), "--device", "cpu", "--emulate", "--max-targets", "1",
                 "--json", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    assert rc == 0 and abs(row["delta_psnr"]) <= 0.5
    assert row["exact"]["psnr"] != row["fast"]["psnr"]  # the two modes really differ
    assert "| icl_nuim_livingroom_rgbd5 |" in capsys.readouterr().out
