"""Run logging without TensorBoard: one warning, metrics.jsonl still written."""

from __future__ import annotations

import builtins
import json

import pytest

from da3gs.train import logging as tlog


def test_no_tensorboard_warns_once(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(tlog, "_TB_WARNED", False)
    with pytest.warns(UserWarning, match="TensorBoard unavailable"):
        log = tlog.RunLogger(tmp_path, tensorboard=True, progress=False)
    assert log.tb is None
    log.scalars(5, {"loss": 1.5}, "train")
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.5
    tlog.RunLogger(tmp_path, tensorboard=True)  # no second warning (pytest would not fail on
    assert tlog._TB_WARNED                      # one, but the flag says it was suppressed)
    assert tlog.format_duration(3725) == "1h02m" and tlog.format_duration(65) == "1m05s"
