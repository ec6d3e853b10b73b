"""Run folders: one process at a time (lock), a failed start can be re-run without --resume,
and a damaged newest checkpoint falls back to an intact older one (issue 23, items 2-3)."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from da3gs.train.checkpoint import RunFolderError, RunLock, list_checkpoints
from da3gs.train.config import ConfigError, load_config
from da3gs.train.loop import train
from tests.train.fakes import global_rng_source


def _run(out, steps, resume=False, extra=()):
    cfg = load_config("stage1-tiny", [f"schedule.steps={steps}", f"run.out={out}",
                                      "run.ckpt_every=2", "eval.scenes=0", *extra])
    return train(cfg, resume=resume, source=global_rng_source)


def test_a_locked_run_folder_is_refused(tmp_path):
    _run(tmp_path / "r", 2)
    held = RunLock(tmp_path / "r").acquire()  # another process training in the folder
    try:
        with pytest.raises(RunFolderError, match="in use by another da3gs process"):
            _run(tmp_path / "r", 4, resume=True)
    finally:
        held.release()
    assert _run(tmp_path / "r", 4, resume=True).step == 4


def _hold_and_crash(path: str) -> None:
    import os

    RunLock(path).acquire()
    os._exit(1)  # no cleanup at all: the OS drops the lock


def test_a_crashed_holder_leaves_no_stale_lock(tmp_path):
    _run(tmp_path / "r", 2)
    p = mp.get_context("spawn").Process(target=_hold_and_crash, args=(str(tmp_path / "r"),))
    p.start()
    p.join(60)
    assert p.exitcode == 1
    assert _run(tmp_path / "r", 4, resume=True).step == 4


def test_a_failed_start_can_be_run_again_without_resume(tmp_path):
    with pytest.raises(ConfigError):
        _run(tmp_path / "r", 2, extra=["model.preset=compact-mono"])  # stage1 needs any-view
    assert (tmp_path / "r" / "config.yaml").is_file()
    assert _run(tmp_path / "r", 2).step == 2  # corrected command, no --resume


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_resume_skips_a_damaged_newest_checkpoint(tmp_path, capsys, damage):
    _run(tmp_path / "r", 4)
    ck = list_checkpoints(tmp_path / "r")
    assert [c.name for c in ck] == ["step_00000002", "step_00000004"]
    st = ck[-1] / "train_state.pt"
    if damage == "truncate":
        st.write_bytes(st.read_bytes()[:100])
    else:
        st.unlink()
    res = _run(tmp_path / "r", 6, resume=True)
    assert res.step == 6
    out = capsys.readouterr().out
    assert "resume: skipping" in out and "step_00000004" in out
    names = [c.name for c in list_checkpoints(tmp_path / "r", complete=False)]
    assert "step_00000006" in names


def test_environment_errors_are_one_line(tmp_path, capsys):
    from da3gs.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    for out, msg in ((f, "exists and is not a folder"), (f / "sub", "cannot create the run folder")):
        assert main(["train", "--config", "stage1-tiny", "--out", str(out),
                     "schedule.steps=1", "eval.scenes=0"]) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--config", "stage1-tiny", "optim.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "optim: lr and eps must be > 0" in err and len(err.strip().splitlines()) == 1


def test_disk_full_while_training_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    from da3gs.cli import main
    from da3gs.train import loop

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r" / "x"))

    monkeypatch.setattr(loop, "save_checkpoint", full)
    assert main(["train", "--config", "stage1-tiny", "--out", str(tmp_path / "r"),
                 "schedule.steps=2", "run.ckpt_every=2", "eval.scenes=0"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "Traceback" not in err
