"""The ship gate (da3gs/train/gate.py): the decision rule on synthetic row tables, the table,
and the gate end to end on tiny models and a tiny check set (real scenes only when
../shared/data is present)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from da3gs.train.gate import (GATE_CHECK_SET, GATE_VERSION, ROWS, SHIP_MARGIN, TOLERANCE,
                              CheckSet, compare, decide, format_table, run_gate)

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"

#: the shipped mini's numbers of docs/training.md#results, as a full row table
BASE = {"real/llff_fern/nvs_psnr/pose_conditioned": 14.48,
        "real/icl_nuim_livingroom_rgbd5/nvs_psnr/pose_conditioned": 21.01,
        "real/lego_400/nvs_psnr/pose_conditioned": 5.77,
        "procedural/nvs_psnr/pose_conditioned": 16.77,
        "real/llff_fern/nvs_psnr/pose_free": 14.37,
        "real/llff_fern/auc@30": 0.098,
        "real/icl_nuim_livingroom_rgbd5/abs_rel": 0.170,
        "real/icl_nuim_livingroom_rgbd5/nvs_psnr/pose_free": 11.02,
        "real/lego_400/nvs_psnr/pose_free": 1.70,
        "procedural/nvs_psnr/pose_free": 13.60,
        "real/icl_nuim_livingroom_rgbd5/auc@30": 0.0,
        "real/lego_400/auc@30": 0.0,
        "procedural/auc@30": 0.058,
        "real/icl_nuim_livingroom_rgbd5/delta1": 0.697,
        "procedural/abs_rel": 0.409,
        "procedural/delta1": 0.393}
FERN_PC = "real/llff_fern/nvs_psnr/pose_conditioned"


def _with(**changes) -> dict:
    out = dict(BASE)
    for k, v in changes.items():
        key = {"fern_pc": FERN_PC, "fern_auc": "real/llff_fern/auc@30",
               "icl_absrel": "real/icl_nuim_livingroom_rgbd5/abs_rel",
               "icl_pf": "real/icl_nuim_livingroom_rgbd5/nvs_psnr/pose_free",
               "proc_auc": "procedural/auc@30", "proc_absrel": "procedural/abs_rel",
               "lego_pc": "real/lego_400/nvs_psnr/pose_conditioned"}[k]
        out[key] = None if v is None else out[key] + v
    return out


def _decide(cand: dict) -> dict:
    return decide(compare(BASE, cand))


def test_rows_are_data_with_the_issue_targets():
    head = [r for r in ROWS if r.headline]
    assert [r.target for r in head] == [18.0, 24.0, 12.0, 20.0, 17.0, 0.30, 0.12]
    assert {r.key for r in ROWS} == set(BASE) and len({r.key for r in ROWS}) == len(ROWS)
    assert TOLERANCE["psnr"] == 0.3 and TOLERANCE["auc"] == 0.02 and SHIP_MARGIN == 1.0
    assert not [r for r in ROWS if r.kind == "abs_rel"][0].higher_is_better


def test_equal_weights_do_not_ship():
    d = _decide(dict(BASE))
    assert not d["ship"] and d["headline_score"] == 0.0 and "does not beat" in d["reasons"][0]


@pytest.mark.parametrize("gain, ship", [(0.31, True), (0.29, False)])
def test_headline_gain_must_reach_the_margin(gain, ship):
    d = _decide(_with(fern_pc=gain))
    assert d["ship"] is ship and math.isclose(d["headline_score"], gain / 0.3)


def test_lower_is_better_rows_count_a_drop_as_a_gain():
    d = _decide(_with(icl_absrel=-0.02))
    assert d["ship"] and math.isclose(d["headline_score"], 2.0)
    d = _decide(_with(icl_absrel=+0.02, fern_pc=3.0))  # a headline row may not pay for another
    assert not d["ship"] and "ICL-NUIM depth AbsRel" in d["reasons"][0]


@pytest.mark.parametrize("change, ship", [
    ({"icl_pf": -0.29}, True), ({"icl_pf": -0.30}, True), ({"icl_pf": -0.31}, False),
    ({"proc_auc": -0.019}, True), ({"proc_auc": -0.021}, False),
    ({"proc_absrel": +0.009}, True), ({"proc_absrel": +0.011}, False),
    ({"fern_auc": -0.021}, False), ({"lego_pc": -0.31}, False)])
def test_no_row_may_lose_more_than_its_tolerance(change, ship):
    d = _decide(_with(fern_pc=2.0, **change))
    assert d["ship"] is ship, d


def test_missing_rows_never_pass():
    cand = _with(fern_pc=5.0)
    del cand["real/lego_400/auc@30"]  # a guard row not measured
    res = compare(BASE, cand)
    assert [r["status"] for r in res if r["key"] == "real/lego_400/auc@30"] == ["missing"]
    d = decide(res)
    assert not d["ship"] and "missing rows" in d["reasons"][0]
    cand = _with(fern_pc=None)  # a headline row missing on the candidate: no score at all
    d = decide(compare(BASE, cand))
    assert not d["ship"] and d["headline_score"] is None
    base = dict(BASE, **{FERN_PC: float("nan")})  # not finite on the shipped side: missing too
    assert not decide(compare(base, _with(lego_pc=1.0)))["ship"]


def test_table_shows_every_row_and_the_decision():
    cand = _with(fern_pc=1.0, icl_pf=-0.5)
    del cand["procedural/delta1"]
    res = compare(BASE, cand)
    text = format_table(res, decide(res))
    lines = text.splitlines()
    assert len(lines) == 2 + len(ROWS) + 2
    assert "FAIL" in [ln for ln in lines if ln.startswith("ICL-NUIM NVS PSNR, pose-free")][0]
    assert "missing" in [ln for ln in lines if ln.startswith("procedural depth delta1")][0]
    assert "+1.00" in [ln for ln in lines if ln.startswith("fern NVS PSNR, pose-cond")][0]
    assert lines[-1].startswith("DON'T SHIP")


# ---------------------------------------------------------------- end to end, tiny

TINY = CheckSet(scenes=2, views=3, height=42, width=42, batch_size=2, real_views=3, real_res=56,
                procedural=(("num_primitives", (2, 4)), ("max_march_steps", 16)))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from da3gs.models.loading import load_model, save_model

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_model(load_model("random:tiny-gs"), d / "a")
    torch.manual_seed(1)
    save_model(load_model("random:tiny-gs"), d / "b")
    return d / "a", d / "b"


def test_gate_end_to_end_on_tiny_models(tiny_models):
    a, b = tiny_models
    rep = run_gate(b, shipped=a, data_root="", device="cpu", precision="fp32", check=TINY,
                   log=lambda m: None)
    assert rep["gate_version"] == GATE_VERSION and rep["full_protocol"] is False
    rows = {r["key"]: r for r in rep["rows"]}
    assert len(rows) == len(ROWS)
    for k, r in rows.items():  # procedural rows measured for both, real rows missing
        if k.startswith("procedural/"):
            assert r["status"] in ("ok", "regressed") and math.isfinite(r["candidate"]), r
        else:
            assert r["status"] == "missing" and r["candidate"] is None, r
    assert not rep["decision"]["ship"] and "missing rows" in rep["decision"]["reasons"][0]
    assert rep["check_set"]["missing_scenes"] == ["llff_fern", "lego_400",
                                                   "icl_nuim_livingroom_rgbd5"]
    assert rep["models"]["shipped"]["sha256"] != rep["models"]["candidate"]["sha256"]
    assert rep["check_set"]["sets"]["procedural"]["samples"] == 2
    json.dumps(rep)  # JSON-able
    # the same model on both sides: the same numbers (one check set, deterministic)
    same = run_gate(a, shipped=a, data_root="", device="cpu", precision="fp32", check=TINY,
                    log=lambda m: None)
    for r in same["rows"]:
        if r["status"] != "missing":
            assert r["delta"] == 0.0, r
    assert same["check_set"]["sets"] == rep["check_set"]["sets"]


@pytest.mark.skipif(not (SHARED / "llff_fern").is_dir(), reason="../shared/data is absent")
def test_gate_rows_name_the_real_scenes(tiny_models):
    """The real check scenes produce every gate row (the row keys match the evaluation's)."""
    import dataclasses

    a, _ = tiny_models
    rep = run_gate(a, shipped=a, data_root=SHARED, device="cpu", precision="fp32", log=lambda m: None,
                   check=dataclasses.replace(TINY, scenes=1, real_selection="even"))
    assert rep["check_set"]["missing_scenes"] == []
    assert [r["name"] for r in rep["rows"] if r["status"] == "missing"] == []
    assert not rep["decision"]["ship"] and rep["decision"]["headline_score"] == 0.0


def test_default_check_set_is_the_docs_protocol():
    c = GATE_CHECK_SET.eval_data_config(Path("/data"))
    assert (c.scenes, c.views, c.height, c.width, c.real_views, c.real_res, c.real_selection,
            c.seed) == (32, 4, 196, 252, 8, 280, "overlap", 0)
    assert c.real == [{"path": "/data/llff_fern", "factor": 8}, "/data/lego_400",
                      "/data/icl_nuim_livingroom_rgbd5"]


def _script(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("args, what", [
    (["mini", "--bogus"], "unrecognized arguments"),
    (["no/such/model_dir"], "not found"),
    (["mini", "--data-root", "/no/such/folder"], "no such folder"),
    (["mini", "--reduced", "scenez=3"], "expected KEY=VALUE"),
    (["mini", "--device", "cuda:0"] if not torch.cuda.is_available() else ["mini", "--precision",
                                                                            "fp8"], "")])
def test_gate_script_bad_flags_are_one_line_exit_2(args, what):
    r = _script("gate.py", *args)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gate: error:") and what in lines[0], r.stderr


def test_train_gpu_script_gate_modes(tmp_path):
    """scripts/train_gpu.sh: GATE_ONLY=1 runs only the gate on CKPT (or RUN); GATE=1 / export
    gate the run's newest checkpoint after training (python stubbed: the arguments are shown)."""
    import os

    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "python").write_text('#!/bin/sh\necho "ARGS: $*"\n')
    (stub / "python").chmod(0o755)
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000002").mkdir(parents=True)
    env = dict(os.environ, PATH=f"{stub}:{os.environ['PATH']}", NGPU="1", OUT=str(tmp_path / "o"),
               RUN=str(run))

    def call(**kw):
        return subprocess.run(["bash", str(ROOT / "scripts/train_gpu.sh"), "stage2-campaign", "3"],
                              env=dict(env, **kw), capture_output=True, text=True,
                              check=True).stdout

    out = call(GATE_ONLY="1", CKPT="mini")
    assert f"scripts/gate.py mini --export {tmp_path}/o/cand_gpu --out {tmp_path}/o/gate.json" \
        in out and "da3gs.cli" not in out, out
    out = call(GATE="1")
    assert "--max-minutes 3" in out and f"scripts/gate.py {run} --export {tmp_path}/o/candidate " \
        f"--out {tmp_path}/o/gate.json" in out, out
    out = call(GATE="export")
    assert f"scripts/gate.py {run} --export {tmp_path}/o/candidate --export-only" in out, out
    assert "scripts/gate.py" not in call()
