"""A dispatch-mode recorder of the ops that read device values on the host (test helper).

On CUDA each of these blocks the host until the GPU queue drains (a *sync*), and none may run
inside a CUDA-graph capture; on the CPU they are harmless, which is why a CPU test can prove a
code path free of them: :class:`SyncRecorder` records every such op dispatched while it is
active, whatever the device.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: aten ops that read a tensor's values on the host, or whose output size depends on them;
#: the ``_linalg_*`` ones read LAPACK/cuSOLVER error or convergence flags on the host (on the
#: CPU the SVD's and eigh's checks run inside their kernels, so the op itself is listed)
SYNC_OPS = ("_local_scalar_dense", "item", "is_nonzero", "nonzero", "nonzero_static", "equal",
            "masked_select", "unique", "_unique", "_unique2", "unique_consecutive",
            "unique_dim", "repeat_interleave", "bincount", "masked_scatter",
            "_linalg_check_errors", "_linalg_svd", "_linalg_eigh")


class SyncRecorder(TorchDispatchMode):
    """``with SyncRecorder() as rec: ...`` then ``rec.syncs`` lists the host-reading ops
    (boolean-mask indexing included) and ``rec.ops`` every aten op, in order."""

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []
        self.ops: list[str] = []

    @contextmanager
    def paused(self):
        """Record nothing inside (e.g. around a callee allowed to sync); call it where the
        recorder is the innermost mode, outside ``__torch_dispatch__``."""
        self.__exit__(None, None, None)
        try:
            yield
        finally:
            self.__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        self.ops.append(name)
        if name in SYNC_OPS:
            self.syncs.append(name)
        elif name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in idx or ()):
                self.syncs.append(f"{name}(bool mask)")
        return func(*args, **kwargs)
