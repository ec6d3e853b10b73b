"""Helpers to build the official Depth Anything 3 network (test-only dependency).

The official package (``depth-anything-3==0.1.1``, installed with ``--no-deps`` plus addict,
omegaconf and einops) is never imported by da3gs itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def _stub_evo() -> None:
    """The official GS adapter imports ``evo`` (a trajectory toolkit) only for pose-scale
    alignment with ground-truth poses, a path these tests never take. Register a stub so the
    module imports without installing evo; using it raises."""
    import sys
    import types

    if "evo.core.trajectory" in sys.modules:
        return
    try:
        import evo.core.trajectory  # noqa: F401
        return
    except Exception:
        pass

    class PosePath3D:  # noqa: D401
        def __init__(self, *a, **k):
            raise RuntimeError("evo stub: pose alignment is not available in these tests")

    for name in ("evo", "evo.core", "evo.core.trajectory"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["evo.core.trajectory"].PosePath3D = PosePath3D


def official_available() -> bool:
    _stub_evo()
    try:
        import depth_anything_3.cfg  # noqa: F401
        import depth_anything_3.registry  # noqa: F401
    except Exception:
        return False
    return True


requires_official = pytest.mark.skipif(not official_available(),
                                       reason="official depth-anything-3 package not installed")


def build_official(name: str, seed: int = 0) -> torch.nn.Module:
    """Official network ``name`` (``da3-small``...) with random weights.

    Default init plus noise on every parameter (0.02 + half the parameter's own spread), so
    that no two LayerNorms or biases are alike and outputs vary across pixels and views; the
    FOV bias is lifted so that focal lengths are not clamped."""
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY

    torch.manual_seed(seed)
    net = create_object(load_config(MODEL_REGISTRY[name]))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            spread = float(p.std()) if p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=g) * (0.02 + 0.5 * spread))
        for m in net.modules():
            if type(m).__name__ == "CameraDec":
                fov = m.fc_fov[0]
                fov.weight.mul_(0.1 / max(float(fov.weight.std()), 1e-6) / fov.in_features ** 0.5)
                fov.bias.add_(1.0 - fov.bias.mean())
    return net.eval()


def save_official(net: torch.nn.Module, folder: Path, name: str) -> Path:
    """Write ``net`` as the official hub layout: ``config.json`` + ``model.safetensors``
    with keys under ``model.`` (as ``DepthAnything3.save_pretrained`` does)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {f"model.{k}": v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_name": name}))
    return folder


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (a scale-aware relative error)."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
