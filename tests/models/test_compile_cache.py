"""The persistent compile cache: where it points, what it leaves alone, and that a second
process really loads the first one's compiled graph from it (CPU Inductor)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from da3gs.models import compile_cache
from da3gs.models.compile_cache import default_compile_cache, use_compile_cache


@pytest.fixture
def clean_env(monkeypatch):
    for k in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "DA3GS_COMPILE_CACHE",
              "XDG_CACHE_HOME"):
        monkeypatch.setenv(k, "x")  # so that monkeypatch restores what use_compile_cache sets
        monkeypatch.delenv(k)
    return monkeypatch


def test_default_folder_follows_env(clean_env, tmp_path):
    assert default_compile_cache() == __import__("pathlib").Path(
        os.path.expanduser("~")) / ".cache" / "da3gs" / "compile"
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_compile_cache() == tmp_path / "xdg" / "da3gs" / "compile"
    clean_env.setenv("DA3GS_COMPILE_CACHE", str(tmp_path / "mine"))
    assert default_compile_cache() == tmp_path / "mine"


def test_points_inductor_and_triton_at_the_folder(clean_env, tmp_path):
    got = use_compile_cache(tmp_path / "c")
    assert got is not None and got.parent.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(got)
    assert got.parent.name == f"torch-{torch.__version__.replace('+', '-')}"
    assert os.environ["TRITON_CACHE_DIR"] == str(got.parent / "triton")
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(got)  # what Inductor itself will use


def test_user_folders_win(clean_env, tmp_path):
    clean_env.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user_ind"))
    clean_env.setenv("TRITON_CACHE_DIR", str(tmp_path / "user_tri"))
    assert use_compile_cache(tmp_path / "c") == tmp_path / "user_ind"
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "user_tri")
    assert not (tmp_path / "c").exists()


def test_torch_own_default_is_not_a_user_choice(clean_env, tmp_path):
    import torch._dynamo.utils  # noqa: F401  (torch writes its default folder into the variable)
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    cache_dir()
    got = use_compile_cache(tmp_path / "c")
    assert got is not None and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(got)


def test_unwritable_folder_warns_and_keeps_defaults(clean_env, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level("WARNING", logger=compile_cache.__name__):
        assert use_compile_cache(blocker / "sub") is None
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
    assert "compile cache not writable" in caplog.text and str(blocker) in caplog.text
    assert blocker.read_text() == "not a folder"  # nothing touched


_CHILD = textwrap.dedent("""
    import torch
    from torch._dynamo.utils import counters
    from da3gs.models.compile_cache import use_compile_cache
    use_compile_cache()
    f = torch.compile(lambda x: torch.sin(x) * 2 + x.cos(), backend="inductor")
    f(torch.randn(64))
    print("HIT", counters["inductor"]["fxgraph_cache_hit"], "MISS",
          counters["inductor"]["fxgraph_cache_miss"])
""")


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None and
                    shutil.which("c++") is None, reason="CPU Inductor needs a C++ compiler")
def test_second_process_loads_the_first_ones_graph(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["DA3GS_COMPILE_CACHE"] = str(tmp_path / "cache")
    outs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        outs.append(r.stdout.split())
    assert outs[0][1:4:2] == ["0", "1"]  # first process: compiled (a miss), wrote the cache
    assert outs[1][1:4:2] == ["1", "0"]  # second: loaded it, generated nothing
    assert any((tmp_path / "cache").rglob("*.py"))  # the generated code is in our folder
