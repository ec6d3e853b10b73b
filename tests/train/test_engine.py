"""Engine: loss goes down, exact resume, non-finite steps, run folders, compact preset size."""

from __future__ import annotations

import torch
import pytest

from da3gs.train.checkpoint import RunFolderError, latest_checkpoint, load_checkpoint
from da3gs.train.config import load_config
from da3gs.train.loop import TrainingDiverged, build_network, train
from da3gs.train.optim import build_optimizer, set_lr
from da3gs.train.objectives import make_objective
from da3gs.train.step import StepModule, train_step
from tests.train.fakes import global_rng_source, synth_batch


def _fit(name: str, steps: int, lr: float) -> tuple[float, float]:
    cfg = load_config(name)
    net = build_network(cfg, torch.device("cpu"))
    cfg.run.precision = "fp32"
    mod = StepModule(net, make_objective(cfg))
    opt = build_optimizer(net, cfg.optim)
    set_lr(opt, lr)
    batch = synth_batch(2, 2, gen=torch.Generator().manual_seed(0), cond=[False, True])
    params = [p for p in net.parameters() if p.requires_grad]

    def measure() -> float:
        torch.manual_seed(0)  # the teacher loss draws its local crops from the global RNG
        with torch.no_grad():
            return float(mod(batch)[0])

    before = measure()
    for _ in range(steps):
        assert not train_step(mod, params, opt, batch, 1.0).skipped
    return before, measure()


def test_stage1_lowers_loss():
    before, after = _fit("stage1-tiny", 4, 1e-3)
    assert after < 0.8 * before


def test_teacher_lowers_loss():
    before, after = _fit("teacher-tiny", 8, 1e-3)
    assert after < before


def _run(tmp_path, name, steps, resume=False, extra=(), objective=None):
    cfg = load_config("stage1-tiny", [f"schedule.steps={steps}", f"run.out={tmp_path / name}",
                                      "run.ckpt_every=2", "optim.ema_decay=0.5", "eval.scenes=0",
                                      *extra])
    return train(cfg, resume=resume, source=global_rng_source, objective=objective)


def test_resume_is_bit_identical(tmp_path, monkeypatch):
    full = _run(tmp_path, "full", 4)
    _run(tmp_path, "split", 2)
    res = _run(tmp_path, "split", 4, resume=True)
    assert full.step == res.step == 4
    a_raw, a_ema, a_st = load_checkpoint(full.checkpoint)
    b_raw, b_ema, b_st = load_checkpoint(res.checkpoint)
    for k in a_raw:
        assert torch.equal(a_raw[k], b_raw[k]), k
        assert torch.equal(a_ema[k], b_ema[k]), k
    assert a_st["counters"] == b_st["counters"]
    sa, sb = a_st["optimizer"]["state"], b_st["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # the checkpoint folder is a model load_model reads (EMA weights)
    from da3gs import load_model

    m = load_model(res.checkpoint)
    assert torch.equal(m.net.state_dict()["backbone.cls_token"], b_ema["backbone.cls_token"])


def test_nan_steps_skip_then_stop(tmp_path, monkeypatch):
    cfg = load_config("stage1-tiny")
    objective = make_objective(cfg)
    real, real_norm = objective.loss_fn, objective.normalize
    calls = {"n": 0}

    def counting(batch):  # once per forward of a whole batch
        calls["n"] += 1
        return real_norm(batch)

    def flaky(out, batch, cfg):  # batches 3-4 NaN (skipped), then fine, then NaN for ever
        total, parts = real(out, batch, cfg)
        if calls["n"] in (3, 4) or calls["n"] >= 7:
            total = total * float("nan")
        return total, parts

    objective.loss_fn, objective.normalize = flaky, counting
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row"):
        _run(tmp_path, "nan", 10, extra=["run.max_bad_steps=3"], objective=objective)
    ck = latest_checkpoint(tmp_path / "nan")
    assert ck is not None and ck.name == "step_00000004"
    _, _, st = load_checkpoint(ck)
    assert st["counters"]["bad_total"] == 2 and st["counters"]["batches"] == 6
    raw, _, _ = load_checkpoint(ck)
    assert all(torch.isfinite(v).all() for v in raw.values() if v.is_floating_point())


def test_run_folder_safety(tmp_path, monkeypatch):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not written by da3gs"):
        _run(tmp_path, "foreign", 1)
    _run(tmp_path, "ok", 1)
    with pytest.raises(RunFolderError, match="--resume"):
        _run(tmp_path, "ok", 1)


def test_compact_preset_size():
    from da3gs.models.net import build_net

    net = build_net("compact")
    n = sum(p.numel() for p in net.parameters())
    assert 7.0e6 < n < 8.2e6 and 2 * n <= 16e6
    assert net.gs_head is not None
    mono = build_net("compact-mono")
    assert not mono.has_cameras
