"""nerfstudio plugin: method ``da3gs`` / ``da3gs-fast`` and dataparser ``da3gs-data``.

This is the only package that imports nerfstudio. Install it with ``pip install 'da3gs[nerfstudio]'``.

Importing it also lets ``torch.load``'s weights-only mode (the default since torch 2.6) read
nerfstudio 1.1.5 checkpoints: their optimiser and scheduler states hold the learning rate as a
numpy float64 (nerfstudio's exponential-decay scheduler computes it with numpy), which otherwise
makes ``ns-export``, ``ns-eval`` and ``ns-viewer`` fail on every checkpoint of these methods.
Only numpy's scalar type and its dtypes are allowed: plain data, no code.
"""

try:
    import nerfstudio  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "the da3gs nerfstudio plugin needs nerfstudio: pip install 'da3gs[nerfstudio]' "
        f"({e})") from None


def _allow_numpy_scalars_in_checkpoints() -> None:
    import importlib

    import numpy as np
    import torch

    add = getattr(torch.serialization, "add_safe_globals", None)
    if add is None:  # torch < 2.4: weights-only loading is not the default there
        return
    core = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
    scalar = importlib.import_module(f"{core}.multiarray").scalar
    add([scalar, np.dtype] + [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64)])


_allow_numpy_scalars_in_checkpoints()
