"""scripts/bench_nvs.py: the random-init baseline runs beside the model runs, its rows say so,
and ``--append`` keeps the results file's prose."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "examples" / "toy_scene"


def _module():
    spec = importlib.util.spec_from_file_location("bench_nvs", ROOT / "scripts" / "bench_nvs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_adds_random_init_at_equal_steps(capsys):
    b = _module()
    assert b.main(["--scenes", str(TOY), "--model", "mini", "--pose-mode", "conditioned", "free",
                   "--refine-steps", "0", "7", "--inits", "model", "random", "--init-points", "500",
                   "--device", "cpu", "--dry-run"]) == 0
    cap = capsys.readouterr()
    cmds = [ln for ln in cap.out.splitlines() if ln.startswith("$ ")]
    model = [c for c in cmds if "--model mini" in c]
    rand = [c for c in cmds if "--init random" in c]
    assert len(cmds) == 5 and len(model) == 4 and len(rand) == 1
    assert "--refine-steps 7" in rand[0] and "--init-points 500" in rand[0]
    assert "--model" not in rand[0] and "--pose-mode" not in rand[0]
    assert rand[0].split("--out ")[1].startswith("bench_out/nvs/toy_scene_random_r7 ")
    assert "not run at 0 refine steps" in cap.err


def _metrics(init: str) -> dict:
    p = {"pose_mode": "gt" if init == "random" else "free", "context_indices": [1, 2],
         "context_select": "fps", "init": init}
    if init == "random":
        p.update(init_points=100000, init_extent=3.0)
    return {"scene": "/x/llff_fern", "model": "random-init" if init == "random" else "mini",
            "protocol": p, "mean": {"psnr": 20.0, "ssim": 0.5},
            "mean_before_refinement": {"psnr": 8.0, "ssim": 0.1},
            "timings_s": {"total": 12.34}, "date": "2026-11-29T10:00:00+00:00"}


def test_rows_name_the_init():
    b = _module()
    r = b.row(_metrics("random"), ["da3gs", "eval", "nvs"], 10, "cpu").split(" | ")
    assert r[1] == "random init (100000, extent x3)" and r[2] == "gt" and r[4] == "10"
    assert r[5] == "8.00 -> 20.00"
    r = b.row(_metrics("model"), ["da3gs"], 10, "cpu").split(" | ")
    assert r[1] == "mini" and r[2] == "free"


def test_append_keeps_prose_and_other_tables(tmp_path):
    b = _module()
    sep = "|" + "---|" * b.HEADER.count(" | ") + "---|"
    f = tmp_path / "r.md"
    b.write_table(f, ["| a |"], append=False)
    assert f.read_text() == b.INTRO + f"{b.HEADER}\n{sep}\n| a |\n"
    prose = "# Results\n\nSome text.\n\n| x | y |\n|---|---|\n| 1 | 2 |\n"
    f.write_text(prose)
    b.write_table(f, ["| b |"], append=True)  # no table of this header yet: a new one at the end
    assert f.read_text() == prose + f"\n{b.HEADER}\n{sep}\n| b |\n"
    f.write_text(f.read_text() + "\nClosing words.\n")
    b.write_table(f, ["| c |", "| d |"], append=True)
    assert f.read_text() == prose + f"\n{b.HEADER}\n{sep}\n| b |\n| c |\n| d |\n\nClosing words.\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]  # no temporaries left


def test_strategies_run_both_inits_at_equal_steps_and_compare(capsys):
    b = _module()
    assert b.main(["--scenes", str(TOY), "--model", "mini", "--pose-mode", "conditioned",
                   "--refine-steps", "0", "5", "--inits", "model", "random",
                   "--strategies", "none", "default", "mcmc", "--device", "cpu", "--dry-run"]) == 0
    cmds = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("$ ")]
    assert len(cmds) == 1 + 3 + 3  # model at 0 steps; model and random x 3 strategies at 5
    for s in ("default", "mcmc"):
        pair = [c for c in cmds if f"--refine-strategy {s}" in c]
        assert len(pair) == 2 and sum("--init random" in c for c in pair) == 1
        assert all("--refine-steps 5" in c and f"_r5_{s} " in c for c in pair)
    assert sum("--refine-strategy" not in c for c in cmds) == 3
    m, r = _metrics("model"), _metrics("random")
    m["mean"] = {"psnr": 21.0, "lpips_vgg": 0.3}
    r["mean"] = {"psnr": 20.0, "lpips_vgg": 0.4}
    assert b.row(m, ["da3gs"], 5, "cpu", "mcmc").split(" | ")[4] == "5 mcmc"
    table = b.comparison([("fern", "conditioned", 5, "mcmc", m), ("fern", "random init", 5, "mcmc", r),
                          ("fern", "random init", 5, "none", r)])
    lines = table.splitlines()
    assert len(lines) == 3 and "| fern | conditioned | 5 | mcmc | 21.00 | 20.00 | +1.00 |" in lines[2]
    assert lines[2].endswith("| 0.3000 | 0.4000 | -0.1000 |")
