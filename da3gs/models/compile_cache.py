"""A persistent on-disk cache for ``torch.compile`` (``--compile``), shared across processes.

Inductor keeps what a compile produces (FX graphs with their generated code, AOTAutograd
graphs, Triton kernels and their autotuning) in on-disk caches, so a later process that compiles
the same blocks for the same shapes loads them instead of generating code again: what is left
is Dynamo's tracing, seconds instead of tens of seconds. By default those caches live under
``/tmp/torchinductor_<user>``, which machines wipe at reboot and containers never keep. da3gs
points them at one folder that survives: ``$DA3GS_COMPILE_CACHE``, default
``~/.cache/da3gs/compile`` (``$XDG_CACHE_HOME/da3gs/compile`` where that is set), with a
sub-folder per torch version so two installs never read each other's code.

A user's own ``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR`` win. A folder that cannot be
written is reported in one line and the defaults are kept (compiling still works, only slower
the next time). Nothing is ever deleted here: the folder only grows by what Inductor writes.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["default_compile_cache", "use_compile_cache"]

log = logging.getLogger(__name__)


def default_compile_cache() -> Path:
    """``$DA3GS_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/da3gs/compile`` (``~/.cache/...``)."""
    env = os.environ.get("DA3GS_COMPILE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "da3gs" / "compile"


def _torch_default() -> str:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:  # older layout
        return os.path.join(tempfile.gettempdir(), "torchinductor_" + os.environ.get("USER", ""))
    return default_cache_dir()


def _writable(path: Path) -> str | None:
    """None if ``path`` can be created and written, else why not (one line)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".da3gs-probe-"):
            pass
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    return None


def use_compile_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Point Inductor's and Triton's on-disk caches at ``path`` (default
    :func:`default_compile_cache`) / ``torch-<version>``, for this process and the compiles it
    starts from now on. Call before the first compile: Inductor fixes its folder on first use.

    Returns the Inductor cache folder now in use, or None when the folder is not writable (a
    warning says which; Inductor's defaults stay). A ``TORCHINDUCTOR_CACHE_DIR`` or
    ``TRITON_CACHE_DIR`` already in the environment is kept (the user's choice, or an earlier
    call's), except torch's own default folder, which torch writes into the variable itself."""
    root = Path(path).expanduser() if path is not None else default_compile_cache()
    root = root / f"torch-{torch.__version__.replace('+', '-')}"
    user = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if user and os.path.abspath(user) != os.path.abspath(_torch_default()):
        return Path(user)  # the user's folder (torch writes its default into the variable
        # itself on first use, e.g. when torch._dynamo is imported: that one is not a choice)
    why = _writable(root)
    if why is not None:
        log.warning("compile cache not writable (%s); compiling with torch's default cache "
                    "folder (set DA3GS_COMPILE_CACHE to a writable folder)", why)
        return None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    # both are on by default in today's torch; stated so an older default cannot turn them off
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = True
    return root / "inductor"
