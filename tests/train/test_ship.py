"""Shipping (da3gs/train/ship.py, scripts/ship_model.py): fp16 export and checks, the weights
folder replaced only when the gate says ship (always a temporary copy here, never the real
da3gs/weights/mini), the ledger, run statistics, and warm starts from shipped weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from da3gs.models.loading import load_model, save_model
from da3gs.train import ship as ship_mod
from da3gs.train.gate import GATE_VERSION, ROWS, compare, decide, fp16_state, state_hash
from da3gs.train.ship import (LEDGER_COLUMNS, ShipError, append_ledger, check_model_dir,
                              export_fp16, folder_sha256, ledger_row, next_stretch, run_stats,
                              ship)

ROOT = Path(__file__).resolve().parents[2]


def _tiny(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_model(load_model("random:tiny-gs"), path)
    return path


@pytest.fixture
def weights(tmp_path) -> Path:
    """A shipped-weights folder (fp16 tiny model) in a temporary place."""
    src = _tiny(tmp_path / "src", 0)
    export_fp16(src, tmp_path / "weights" / "mini")
    return tmp_path / "weights" / "mini"


def _report(cand_sha: str, shipped_sha: str, ship: bool, full: bool = True) -> dict:
    base = {r.key: 10.0 if r.kind == "psnr" else 0.2 for r in ROWS}
    cand = dict(base)
    if ship:
        cand[ROWS[0].key] += 1.0
    rows = compare(base, cand)
    return {"gate_version": GATE_VERSION, "full_protocol": full, "rows": rows,
            "decision": decide(rows), "models": {"candidate": {"sha256": cand_sha},
                                                 "shipped": {"sha256": shipped_sha}}}


def _doc(tmp_path) -> Path:
    doc = tmp_path / "training.md"
    doc.write_text("# Training\n\n## Results\n\ntext\n")
    return doc


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _cand_sha(cand: Path) -> str:
    return state_hash(fp16_state(load_model(str(cand)).net))


def test_export_is_fp16_loadable_and_hashed(tmp_path):
    src = _tiny(tmp_path / "src", 3)
    cfg = export_fp16(src, tmp_path / "out", note="a note")
    assert cfg["dtype"] == "float16" and cfg["preset"] == "tiny-gs" and cfg["trained"] == "a note"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["sha256"] == cfg["sha256"]
    info = check_model_dir(tmp_path / "out")
    assert info["sha256"] == cfg["sha256"] == folder_sha256(tmp_path / "out") == _cand_sha(src)
    with pytest.raises(ShipError, match="already exists"):
        export_fp16(src, tmp_path / "out")
    with pytest.raises(ShipError, match="over the"):
        check_model_dir(tmp_path / "out", max_bytes=1000)


def test_export_of_a_run_uses_the_ema_checkpoint(tmp_path):
    from da3gs.train.config import load_config
    from da3gs.train.loop import train

    cfg = load_config("stage1-tiny", [f"run.out={tmp_path / 'run'}", "model.preset=tiny-gs",
                                      "eval.scenes=0"])
    res = train(cfg)
    out = export_fp16(tmp_path / "run", tmp_path / "exp")
    assert out["source"] == str(res.checkpoint) and out["weights"] == "ema" and out["step"] == 3
    from safetensors.torch import load_file

    ema = load_file(str(res.checkpoint / "model.safetensors"))
    got = load_file(str(tmp_path / "exp" / "model.safetensors"))
    assert set(got) == set(ema)
    for k in ema:
        assert torch.equal(got[k], ema[k].half()), k


def test_non_finite_weights_are_refused(tmp_path):
    m = load_model("random:tiny-gs")
    with torch.no_grad():
        next(m.net.parameters()).view(-1)[0] = 1e6  # beyond fp16
    save_model(m, tmp_path / "big")
    with pytest.raises(ShipError, match="not finite in fp16"):
        export_fp16(tmp_path / "big", tmp_path / "out")


def test_ship_refuses_when_the_gate_says_no(tmp_path, weights):
    cand = _tiny(tmp_path / "cand", 1)
    doc = _doc(tmp_path)
    before = (weights / "model.safetensors").read_bytes()
    rep = _report(_cand_sha(cand), folder_sha256(weights), ship=False)
    res = ship(cand, weights, report=rep, ledger=doc, stats={"gpu_minutes": 8.5, "steps": 420},
               log=lambda m: None)
    assert not res["shipped"] and "does not beat" in "; ".join(res["reasons"])
    assert (weights / "model.safetensors").read_bytes() == before
    assert _listing(weights.parent) == ["mini"]  # no temporary left behind
    row = [ln for ln in doc.read_text().splitlines() if ln.startswith("| 2")]
    assert len(row) == 1 and "| 0 | 8.5 | 420 |" in row[0] and "| no |" in row[0]


@pytest.mark.parametrize("why", ["other weights", "other shipped", "reduced", "version"])
def test_ship_refuses_a_report_of_something_else(tmp_path, weights, why):
    cand = _tiny(tmp_path / "cand", 1)
    rep = _report(_cand_sha(cand), folder_sha256(weights), ship=True)
    if why == "other weights":
        rep["models"]["candidate"]["sha256"] = "0" * 16
    elif why == "other shipped":
        rep["models"]["shipped"]["sha256"] = "0" * 16
    elif why == "reduced":
        rep["full_protocol"] = False
    else:
        rep["gate_version"] = GATE_VERSION + 1
    before = folder_sha256(weights)
    res = ship(cand, weights, report=rep, log=lambda m: None)
    assert not res["shipped"] and folder_sha256(weights) == before
    assert _listing(weights.parent) == ["mini"]
    if why == "reduced":  # tests (and only tests) may pass a reduced report
        assert ship(cand, weights, report=rep, allow_reduced=True, log=lambda m: None)["shipped"]


def test_ship_replaces_the_folder_when_the_gate_says_ship(tmp_path, weights):
    cand = _tiny(tmp_path / "cand", 1)
    doc = _doc(tmp_path)
    sha = _cand_sha(cand)
    rep = _report(sha, folder_sha256(weights), ship=True)
    res = ship(cand, weights, report=rep, ledger=doc, stats={"steps": 10, "images": 1920},
               log=lambda m: None)
    assert res["shipped"], res["reasons"]
    assert folder_sha256(weights) == sha and _listing(weights.parent) == ["mini"]
    assert _listing(weights) == ["config.json", "model.safetensors"]
    cfg = json.loads((weights / "config.json").read_text())
    assert cfg["dtype"] == "float16" and cfg["license"] == "Apache-2.0" and cfg["sha256"] == sha
    assert "campaign stretch 0" in cfg["trained"]
    assert load_model(str(weights)).preset.name == "tiny-gs"
    line = [ln for ln in doc.read_text().splitlines() if ln.startswith("| 2")][0]
    assert "| 10 | 1,920 |" in line and "**yes**" in line and "| 11.00 |" in line
    # the next stretch is numbered on
    assert next_stretch(doc) == 1


def test_ship_checks_before_the_gate(tmp_path, weights, monkeypatch):
    """Weights over the size limit never reach the gate; the refusal is a ledger row."""
    monkeypatch.setattr(ship_mod, "MAX_BYTES", 1000)
    cand = _tiny(tmp_path / "cand", 1)
    doc = _doc(tmp_path)
    calls = []
    monkeypatch.setattr("da3gs.train.gate.run_gate", lambda *a, **k: calls.append(1))
    res = ship(cand, weights, ledger=doc, log=lambda m: None)
    assert not res["shipped"] and not calls and "limit" in res["reasons"][0]
    assert "| no |" in doc.read_text() and _listing(weights.parent) == ["mini"]


def test_a_failed_swap_leaves_the_old_weights(tmp_path, weights, monkeypatch):
    cand = _tiny(tmp_path / "cand", 1)
    rep = _report(_cand_sha(cand), folder_sha256(weights), ship=True)
    before = folder_sha256(weights)
    import os

    real = os.replace
    calls = []

    def flaky(a, b):  # moving the new folder into place fails (after the old one moved aside)
        calls.append((a, b))
        if Path(a).name.startswith(".mini.new-") and Path(b) == weights:
            raise OSError("disk gone")
        return real(a, b)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        ship(cand, weights, report=rep, log=lambda m: None)
    monkeypatch.setattr(os, "replace", real)
    assert len(calls) >= 3  # export, old folder aside, (failed) new into place, old restored
    assert folder_sha256(weights) == before and _listing(weights.parent) == ["mini"]


def test_ship_runs_the_gate_on_the_export_without_a_report(tmp_path, weights, monkeypatch):
    cand = _tiny(tmp_path / "cand", 1)
    seen = {}

    def fake_gate(source, shipped=None, log=None, **kw):
        seen.update(source=source, shipped=shipped, kw=kw)
        return _report(folder_sha256(source), folder_sha256(shipped), ship=False)

    monkeypatch.setattr("da3gs.train.gate.run_gate", fake_gate)
    res = ship(cand, weights, gate_kwargs={"data_root": "x"}, log=lambda m: None)
    assert not res["shipped"] and Path(seen["shipped"]) == weights
    assert Path(seen["source"]).parent == weights.parent and seen["kw"] == {"data_root": "x"}


# ---------------------------------------------------------------- ledger and run statistics

def test_ledger_section_is_created_once_and_rows_append(tmp_path):
    doc = tmp_path / "training.md"
    doc.write_text("# Training\n\n## Results\n\nsome text\n")
    assert next_stretch(doc) == 0
    rep = _report("a", "b", ship=False)
    append_ledger(doc, ledger_row(rep, 0, note="baseline", date="2026-12-07"))
    append_ledger(doc, ledger_row(rep, 1, 9.0, 1000, 192000, False, "n|o", date="2026-12-08"))
    text = doc.read_text()
    assert text.startswith("# Training\n\n## Results\n\nsome text\n\n## Ledger\n")
    lines = text.splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    assert table[0] == "| " + " | ".join(LEDGER_COLUMNS) + " |" and len(table) == 4
    assert table[2].startswith("| 2026-12-07 | 0 | - | - | - | 10.00 |")
    assert table[3].startswith("| 2026-12-08 | 1 | 9.0 | 1,000 | 192,000 |")
    assert table[3].endswith("| +0.00 | no | n/o |")
    assert next_stretch(doc) == 2
    # a section after the ledger stays where it is; rows go into the ledger's table
    doc.write_text(text + "\n## Later\n\nmore\n")
    append_ledger(doc, ledger_row(rep, 2, date="2026-12-09"))
    lines = doc.read_text().splitlines()
    assert lines.index("## Later") > max(i for i, ln in enumerate(lines) if "2026-12-09" in ln)
    assert next_stretch(doc) == 3


def test_run_stats_sums_processes_and_files(tmp_path):
    a = tmp_path / "a.jsonl"
    recs = [{"kind": "train", "step": 50, "elapsed_s": 60.0, "images_seen": 9600},
            {"kind": "eval", "step": 50},
            {"kind": "train", "step": 100, "elapsed_s": 120.0, "images_seen": 19200},
            # a resumed process: elapsed_s starts again
            {"kind": "train", "step": 150, "elapsed_s": 90.0, "images_seen": 28800},
            {"kind": "train", "step": 200, "elapsed_s": 150.0, "images_seen": 38400}]
    a.write_text("\n".join(json.dumps(r) for r in recs) + "\nnot json\n")
    st = run_stats([a])
    assert st == {"gpu_minutes": 4.5, "steps": 200, "images": 38400}
    st = run_stats([a], since_step=100)  # the part after step 100
    assert st == {"gpu_minutes": 2.5, "steps": 100, "images": 19200}
    b = tmp_path / "b"
    b.mkdir()
    (b / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 30, "elapsed_s": 30.0})
                                     + "\n")
    st = run_stats([a, b])
    assert st["gpu_minutes"] == 5.0 and st["steps"] == 230 and st["images"] is None
    with pytest.raises(ShipError, match="cannot read"):
        run_stats([tmp_path / "none.jsonl"])


def test_trainer_logs_images_seen_and_elapsed_time(tmp_path):
    from da3gs.train.config import load_config
    from da3gs.train.loop import train

    cfg = load_config("stage1-tiny", [f"run.out={tmp_path / 'run'}", "eval.scenes=0"])
    train(cfg)
    recs = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in recs if r["kind"] == "train"]
    assert [r["images_seen"] for r in tr] == [4, 8, 12]  # 2 samples x 2 views a step
    assert all(r["elapsed_s"] >= 0 for r in tr)
    st = run_stats([tmp_path / "run"])
    assert st["steps"] == 3 and st["images"] == 12


# ---------------------------------------------------------------- warm starts

def test_warm_start_stage1_and_stage2_from_shipped_weights(tmp_path):
    """Stage 1 and stage 2 start from every tensor of the shipped (fp16) folder; stage 1 keeps
    the GS head frozen, stage 2 (init_head off, as the campaign preset) trains only the head;
    a run folder as model.init means its newest checkpoint."""
    from safetensors.torch import load_file

    from da3gs.train.config import load_config
    from da3gs.train.loop import build_network, train

    shipped = tmp_path / "mini"
    export_fp16(_tiny(tmp_path / "src", 5), shipped)
    ref = load_model(str(shipped)).net.state_dict()
    s1 = load_config("stage1-tiny", [f"model.init={shipped}", "model.preset=tiny-gs",
                                     f"run.out={tmp_path / 's1'}", "eval.scenes=0",
                                     "schedule.steps=2"])
    net = build_network(s1, torch.device("cpu"))
    assert all(torch.equal(v, ref[k]) for k, v in net.state_dict().items())
    train(s1)
    w1 = load_file(str(tmp_path / "s1" / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert all(torch.equal(w1[k], ref[k]) for k in w1 if k.startswith("gs_head."))
    assert any(not torch.equal(w1[k], ref[k]) for k in w1 if k.startswith("backbone."))

    s2 = load_config("stage2-tiny", [f"model.init={tmp_path / 's1'}", "stage2.init_head=false",
                                     f"run.out={tmp_path / 's2'}", "eval.scenes=0",
                                     "schedule.steps=1"])
    net2 = build_network(s2, torch.device("cpu"))
    assert all(torch.equal(v, w1[k]) for k, v in net2.state_dict().items() if k in w1)
    train(s2)
    w2 = load_file(str(tmp_path / "s2" / "checkpoints" / "step_00000001" / "model.safetensors"))
    assert all(torch.equal(w2[k], w1[k]) for k in w1 if not k.startswith("gs_head."))
    assert any(not torch.equal(w2[k], w1[k]) for k in w1 if k.startswith("gs_head."))
    # the pitfall the campaign preset avoids: init_head re-initialises the trained head's biases
    s2_init = load_config("stage2-tiny", [f"model.init={shipped}"])
    assert s2_init.stage2.init_head
    b = build_network(s2_init, torch.device("cpu")).state_dict()
    assert any(not torch.equal(b[k], ref[k]) for k in ref if k.startswith("gs_head."))


def test_campaign_presets():
    from da3gs.train.config import load_config

    s1 = load_config("stage1-campaign")
    assert s1.stage == "stage1" and s1.model.init == "mini" and s1.model.preset == "compact"
    s2 = load_config("stage2-campaign", ["model.init=runs/s1-1"])
    assert s2.stage == "stage2" and s2.stage2.init_head is False and s2.model.preset == "compact"


def test_model_init_run_folder_without_checkpoint_is_one_line(tmp_path):
    from da3gs.train.checkpoint import prepare_run_dir
    from da3gs.train.config import ConfigError, load_config
    from da3gs.train.loop import build_network

    prepare_run_dir(tmp_path / "empty", resume=False)
    cfg = load_config("stage1-tiny", [f"model.init={tmp_path / 'empty'}"])
    with pytest.raises(ConfigError, match="without a complete checkpoint"):
        build_network(cfg, torch.device("cpu"))


# ---------------------------------------------------------------- the script

def _script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "ship_model.py"), *args],
                          capture_output=True, text=True, cwd=cwd)


def test_ship_script_with_a_report(tmp_path, weights):
    cand = _tiny(tmp_path / "cand", 1)
    doc = _doc(tmp_path)
    rep = tmp_path / "gate.json"
    rep.write_text(json.dumps(_report(_cand_sha(cand), folder_sha256(weights), ship=False)))
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"kind": "train", "step": 40, "elapsed_s": 300.0,
                             "images_seen": 7680}) + "\n")
    r = _script(str(cand), "--report", str(rep), "--weights-dir", str(weights), "--ledger",
                str(doc), "--metrics", str(m), "--gpu-minutes", "9.5", "--note", "stretch test")
    assert r.returncode == 1, r.stderr
    assert "NOT shipped" in r.stdout and "DON'T SHIP" in r.stdout
    line = [ln for ln in doc.read_text().splitlines() if ln.startswith("| 2")][0]
    assert "| 0 | 9.5 | 40 | 7,680 |" in line and "stretch test; not shipped" in line


@pytest.mark.parametrize("args, what", [
    (["mini", "--bogus"], "unrecognized arguments"),
    (["mini", "--weights-dir", "/no/such/dir"], "not a model folder"),
    (["mini", "--report", "/no/such.json"], "cannot read"),
    (["mini", "--metrics", "/no/such.jsonl"], "cannot read")])
def test_ship_script_bad_flags_are_one_line_exit_2(args, what, tmp_path):
    r = _script(*args, "--ledger", str(_doc(tmp_path)))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ship_model: error:") and what in lines[0]
