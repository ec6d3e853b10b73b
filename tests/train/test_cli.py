"""``da3gs train`` end to end on the CPU (procedural data, tiny preset)."""

from __future__ import annotations

import json

from da3gs.cli import main


def test_train_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--config", "stage1-tiny", "steps=3", "eval.scenes=1", "--out", str(out)])
    assert rc == 0
    ck = out / "checkpoints" / "step_00000003"
    assert (ck / "model.safetensors").is_file() and (ck / "train_state.pt").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2, 3]
    assert any(r["kind"] == "eval" and "procedural/abs_rel" in r for r in lines)
    capsys.readouterr()
    # the same command again refuses to overwrite; with --resume it continues (already done)
    assert main(["train", "--config", "stage1-tiny", "steps=3", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    rc = main(["train", "--config", "stage1-tiny", "steps=4", "eval.scenes=1", "--out", str(out),
               "--resume"])
    assert rc == 0 and (out / "checkpoints" / "step_00000004").is_dir()
    capsys.readouterr()
    rc = main(["train", "--config", "stage1-tiny", "eval.scenes=1", "--eval-only",
               "--checkpoint", str(out / "checkpoints" / "step_00000004")])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert 0 <= rec["metrics"]["procedural/delta1"] <= 1


def test_wrong_key_is_one_line_exit_2(capsys):
    assert main(["train", "--config", "stage1-tiny", "optim.backbone_lr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("da3gs train: error: unknown config key 'optim.backbone_lr'; "
                   "did you mean 'optim.backbone_lr_mult'?")


def test_list_configs_needs_no_config_and_missing_config_is_one_line(capsys):
    assert main(["train", "--list-configs"]) == 0
    names = capsys.readouterr().out.split()
    assert "stage1-compact" in names and "stage2-compact" in names
    assert main(["train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--config is required" in err[0]
